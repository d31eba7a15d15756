"""An app's web-app settings (Dify's Site): what ``GET /v1/site`` returns (reference §2.12) and what the console's
``POST /apps/{id}/site`` accepts. Shared by the console (writes ``apps.site``) and the runtime (serves it from its
app cache)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from shared.models import App

DEFAULT_LANGUAGE = "en-US"

Text255 = Annotated[str, StringConstraints(max_length=255)]


class SiteUpdate(BaseModel):
    """A partial update: absent fields keep their value; null clears the nullable ones (back to the app's own
    value for the icon fields). Unknown fields are ignored, as Dify's console sends a few more."""

    model_config = ConfigDict(extra="ignore")

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] = ""
    icon_type: Literal["emoji", "image", "link"] | None = None
    icon: Text255 | None = None
    icon_background: Text255 | None = None
    description: Annotated[str, StringConstraints(max_length=1000)] | None = None
    # a BCP 47 tag such as en-US or zh-Hans
    default_language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
                                                       max_length=35)] = DEFAULT_LANGUAGE
    chat_color_theme: Text255 | None = None
    chat_color_theme_inverted: bool = False
    copyright: Text255 | None = None
    privacy_policy: Text255 | None = None
    custom_disclaimer: Annotated[str, StringConstraints(max_length=512)] | None = None
    show_workflow_steps: bool = True
    use_icon_as_answer_icon: bool = False


def site_view(app: App) -> dict[str, Any]:
    """The site as ``GET /v1/site`` returns it: the saved settings over values derived from the app."""
    saved = app.site or {}

    def pick(name: str, default: Any) -> Any:
        value = saved.get(name)
        return default if value is None else value

    icon_type = pick("icon_type", app.icon_type)
    icon = pick("icon", app.icon)
    return {
        "title": pick("title", app.name),
        "chat_color_theme": saved.get("chat_color_theme"),
        "chat_color_theme_inverted": bool(saved.get("chat_color_theme_inverted", False)),
        "icon_type": icon_type,
        "icon": icon,
        "icon_background": pick("icon_background", app.icon_background),
        # a link icon is its own URL; an uploaded image has no public URL here (Dify signs one)
        "icon_url": icon if icon_type == "link" else None,
        "description": pick("description", app.description),
        "copyright": saved.get("copyright"),
        "privacy_policy": saved.get("privacy_policy"),
        "custom_disclaimer": saved.get("custom_disclaimer"),
        "default_language": pick("default_language", DEFAULT_LANGUAGE),
        "show_workflow_steps": bool(saved.get("show_workflow_steps", True)),
        "use_icon_as_answer_icon": bool(saved.get("use_icon_as_answer_icon", False)),
    }
