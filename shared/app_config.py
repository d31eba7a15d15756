"""The app model config (reference §5): one schema for the console (validates, stores) and the runtime
(reads, validates inputs against ``user_input_form``, renders ``{{var}}`` prompts, serves /parameters)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

VAR_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,29}$")
PLACEHOLDER_RE = re.compile(r"\{\{([a-zA-Z_][a-zA-Z0-9_]{0,29})\}\}")
FORM_TYPES = ("text-input", "paragraph", "select", "number", "checkbox", "file", "file-list", "json_object",
              "external_data_tool")
DEFAULT_FILE_UPLOAD = {
    "image": {"enabled": False, "number_limits": 3, "detail": "high", "transfer_methods": ["remote_url", "local_file"]}
}
SYSTEM_PARAMETERS = {
    "image_file_size_limit": 10,
    "video_file_size_limit": 100,
    "audio_file_size_limit": 50,
    "file_size_limit": 15,
    "workflow_file_upload_limit": 10,
}


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    provider: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=255)
    mode: Literal["chat", "completion"] = "chat"
    completion_params: dict[str, Any] = Field(default_factory=dict)


class FormField(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: str = ""
    variable: str
    required: bool = False
    max_length: int | None = Field(default=None, ge=1)
    default: Any = None
    options: list[str] = Field(default_factory=list)

    @field_validator("variable")
    @classmethod
    def _var(cls, v: str) -> str:
        if not VAR_RE.match(v):
            raise ValueError(f"variable {v!r} must be an identifier of at most 30 characters")
        return v


class FormItem(BaseModel):
    """One ``{"<type>": {...}}`` entry of user_input_form, flattened for use."""

    type: str
    field: FormField


class Feature(BaseModel):
    model_config = ConfigDict(extra="allow")
    enabled: bool = False


MODERATION_TYPES = ("keywords", "openai_moderation", "api")
MODERATION_KEYWORDS_MAX_CHARS = 10000  # Dify's limits (core/moderation/keywords)
MODERATION_KEYWORDS_MAX_LINES = 100
MODERATION_PRESET_MAX_CHARS = 100
ANSWER_CACHE_MAX_TTL = 30 * 86400


class ModerationIO(BaseModel):
    """``inputs_config`` / ``outputs_config``: review this side, answer ``preset_response`` when flagged."""

    model_config = ConfigDict(extra="allow")
    enabled: bool = False
    preset_response: str = ""


class ModerationSettings(BaseModel):
    """``sensitive_word_avoidance.config``. ``provider``/``model`` are Plexus extensions for
    ``openai_moderation`` (Dify always uses the workspace's "openai" provider and its moderation model)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    keywords: str = ""
    inputs_config: ModerationIO | None = None
    outputs_config: ModerationIO | None = None
    provider: str = Field("openai", min_length=1, max_length=64)
    model: str = Field("omni-moderation-latest", min_length=1, max_length=255)
    api_based_extension_id: str = ""  # type api: the API-based extension that judges (docs/extensions.md)

    def keyword_list(self) -> list[str]:
        return [k.strip() for k in self.keywords.splitlines() if k.strip()]


def _reason(e: ValueError) -> str:
    if not isinstance(e, ValidationError):
        return str(e)
    return "; ".join(": ".join(filter(None, (".".join(map(str, err["loc"])), err["msg"]))) for err in e.errors())


class SensitiveWordAvoidance(BaseModel):
    """Dify's shape: ``{enabled, type: "keywords"|"openai_moderation"|"api", config: {keywords?,
    api_based_extension_id?, inputs_config, outputs_config}}``, validated with Dify's rules when enabled (a
    disabled one is kept as sent).

    Loading a stored config (``load_model_config``) is lenient: one saved before these rules, or imported
    from Dify with a setting Plexus lacks, is served as moderation off rather than refused."""

    model_config = ConfigDict(extra="allow")
    enabled: bool = False
    type: str = ""
    config: dict[str, Any] | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _check(cls, data: Any, handler: ModelWrapValidatorHandler[SensitiveWordAvoidance],
               info: ValidationInfo) -> SensitiveWordAvoidance:
        def rules(swa: SensitiveWordAvoidance) -> None:
            if swa.enabled:
                swa.settings()

        return _checked(cls, data, handler, info, rules, "sensitive_word_avoidance", "moderation is off")

    def settings(self) -> ModerationSettings:
        """The validated config (ValueError in Dify's words when it is not usable)."""
        if self.type not in MODERATION_TYPES:
            raise ValueError(f"type must be one of {list(MODERATION_TYPES)}")
        if not isinstance(self.config, dict):
            raise ValueError("config must be a dict")  # noqa: TRY004 - ValueError is the 400 path
        for side in ("inputs_config", "outputs_config"):
            if not isinstance(self.config.get(side), dict):
                raise ValueError(f"{side} must be a dict")  # noqa: TRY004
        s = ModerationSettings.model_validate(self.config)
        assert s.inputs_config is not None and s.outputs_config is not None
        if not s.inputs_config.enabled and not s.outputs_config.enabled:
            raise ValueError("At least one of inputs_config or outputs_config must be enabled")
        for side, io in (("inputs_config", s.inputs_config), ("outputs_config", s.outputs_config)):
            if io.enabled and not io.preset_response and self.type != "api":  # the extension answers one
                raise ValueError(f"{side}.preset_response is required")
            if io.enabled and len(io.preset_response) > MODERATION_PRESET_MAX_CHARS:
                raise ValueError(f"{side}.preset_response must be less than {MODERATION_PRESET_MAX_CHARS} characters")
        if self.type == "api" and not s.api_based_extension_id:
            raise ValueError("api_based_extension_id is required")
        if self.type == "keywords":
            if not s.keyword_list():
                raise ValueError("keywords is required")
            if len(s.keywords) > MODERATION_KEYWORDS_MAX_CHARS:
                raise ValueError(f"keywords length must be less than {MODERATION_KEYWORDS_MAX_CHARS}")
            if len(s.keywords.split("\n")) > MODERATION_KEYWORDS_MAX_LINES:
                raise ValueError(f"the number of rows for the keywords must be less than {MODERATION_KEYWORDS_MAX_LINES}")
        return s


class AnswerCache(BaseModel):
    """Plexus extension (not in Dify): reuse an answer for the same memory-less request (docs/moderation.md)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    ttl_seconds: int = Field(3600, ge=1, le=ANSWER_CACHE_MAX_TTL)


class ExternalDataTool(BaseModel):
    """One of a model config's ``external_data_tools`` (Dify's): an enabled one names an API-based extension
    whose answer becomes ``variable`` in the prompt (shared.extensions). Only type ``api`` exists here; a stored
    tool that breaks these rules (a Dify import of a code-based tool, say) is served as off, as moderation is."""

    model_config = ConfigDict(extra="allow")
    enabled: bool = False
    variable: str = ""
    type: str = "api"
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _check(cls, data: Any, handler: ModelWrapValidatorHandler[ExternalDataTool],
               info: ValidationInfo) -> ExternalDataTool:
        def rules(tool: ExternalDataTool) -> None:
            if not tool.enabled:
                return
            if tool.type != "api":
                raise ValueError("type must be 'api' (an API-based extension)")
            if not VAR_RE.match(tool.variable):
                raise ValueError(f"variable {tool.variable!r} must be a valid variable name")
            if not isinstance(tool.extension_id, str) or not tool.extension_id:
                raise ValueError("config.api_based_extension_id is required")

        return _checked(cls, data, handler, info, rules, "external_data_tools", "the tool is off")

    @property
    def extension_id(self) -> Any:
        return self.config.get("api_based_extension_id")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: ModelSpec
    pre_prompt: str = ""
    prompt_type: Literal["simple", "advanced"] = "simple"
    chat_prompt_config: dict[str, Any] = Field(default_factory=dict)
    completion_prompt_config: dict[str, Any] = Field(default_factory=dict)
    user_input_form: list[dict[str, FormField]] = Field(default_factory=list)
    dataset_query_variable: str | None = None
    dataset_configs: dict[str, Any] = Field(default_factory=dict)
    agent_mode: dict[str, Any] = Field(default_factory=lambda: {"enabled": False, "tools": []})
    opening_statement: str = ""
    suggested_questions: list[str] = Field(default_factory=list)
    suggested_questions_after_answer: Feature = Field(default_factory=Feature)
    speech_to_text: Feature = Field(default_factory=Feature)
    text_to_speech: Feature = Field(default_factory=Feature)
    retriever_resource: Feature = Field(default_factory=lambda: Feature(enabled=True))
    annotation_reply: Feature = Field(default_factory=Feature)
    more_like_this: Feature = Field(default_factory=Feature)
    sensitive_word_avoidance: SensitiveWordAvoidance = Field(default_factory=SensitiveWordAvoidance)
    answer_cache: AnswerCache = Field(default_factory=AnswerCache)
    file_upload: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_FILE_UPLOAD))
    external_data_tools: list[ExternalDataTool] = Field(default_factory=list)

    @field_validator("user_input_form")
    @classmethod
    def _form(cls, items: list[dict[str, FormField]]) -> list[dict[str, FormField]]:
        seen: set[str] = set()
        for item in items:
            if len(item) != 1:
                raise ValueError("each user_input_form entry must have exactly one type key")
            (kind, fld), = item.items()
            if kind not in FORM_TYPES:
                raise ValueError(f"user_input_form type {kind!r} must be one of {list(FORM_TYPES)}")
            if kind == "select" and not fld.options:
                raise ValueError(f"select variable {fld.variable!r} needs options")
            if fld.variable in seen:
                raise ValueError(f"variable {fld.variable!r} appears twice in user_input_form")
            seen.add(fld.variable)
        return items

    @model_validator(mode="after")
    def _suggested(self) -> ModelConfig:
        if len(self.suggested_questions) > 10:
            raise ValueError("suggested_questions must have at most 10 items")
        return self

    def form(self) -> list[FormItem]:
        return [FormItem(type=k, field=v) for item in self.user_input_form for k, v in item.items()]

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_model_config(data: dict[str, Any]) -> ModelConfig:
    """Strict: a config as the console accepts it on save (any error is a 400)."""
    return ModelConfig.model_validate(data)


_IGNORED = "ignored"  # validation context key: where a lenient load lists the settings it set aside


def _checked(cls: Any, data: Any, handler: Any, info: ValidationInfo, rules: Any, name: str, off: str) -> Any:
    """A feature setting validated and held to ``rules``: a save refuses one that breaks them; a lenient load
    (``load_model_config``) serves it as ``cls()`` (off) and lists why under ``name``."""
    try:
        value = handler(data)
        rules(value)
        return value
    except ValueError as e:  # pydantic's ValidationError is one too
        ignored = info.context.get(_IGNORED) if isinstance(info.context, dict) else None
        if ignored is None:
            raise
        ignored.append(f"{name}: {_reason(e)} ({off})")
        return cls()


def load_model_config(data: dict[str, Any]) -> tuple[ModelConfig, list[str]]:
    """A stored config as the runtime serves it, and what was set aside (for a warning). Rules added after a
    config was saved must not make the app unusable: an invalid moderation setting is served as moderation
    off. Anything else invalid still raises (ValueError)."""
    ignored: list[str] = []
    return ModelConfig.model_validate(data, context={_IGNORED: ignored}), ignored


def load_moderation(data: Any) -> tuple[SensitiveWordAvoidance, list[str]]:
    """A graph app's ``sensitive_word_avoidance`` feature (its published workflow's ``features``, not validated
    on save), as leniently as ``load_model_config``: an unusable one is moderation off, the reason listed."""
    ignored: list[str] = []
    return SensitiveWordAvoidance.model_validate(data, context={_IGNORED: ignored}), ignored


def validate_inputs(config: ModelConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """Clean ``inputs`` against the form with Dify's messages (ValueError → 400 invalid_param)."""
    return validate_form(config.form(), inputs)


def start_form(variables: list[dict[str, Any]]) -> list[FormItem]:
    """A workflow start node's ``variables`` as form items (same fields, the type inline)."""
    return [FormItem(type=str(v.get("type") or "text-input"), field=FormField.model_validate(v))
            for v in variables if isinstance(v, dict) and v.get("variable")]


def validate_form(form: list[FormItem], inputs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise ValueError("inputs must be an object")  # noqa: TRY004 - ValueError is the 400 invalid_param path
    cleaned: dict[str, Any] = {}
    for item in form:
        f = item.field
        value = inputs.get(f.variable)
        if value is None or value == "":
            if f.required:
                raise ValueError(f"{f.variable} is required in input form")
            cleaned[f.variable] = f.default if f.default is not None else ""
            continue
        if item.type in ("text-input", "paragraph", "select"):
            if not isinstance(value, str):
                raise ValueError(f"{f.variable} in input form must be a string")
            if item.type == "select" and value not in f.options:
                raise ValueError(f"{f.variable} in input form must be one of the following: {f.options}")
            if f.max_length and len(value) > f.max_length:
                raise ValueError(f"{f.variable} in input form must be less than {f.max_length} characters")
            value = value.replace("\x00", "")
        elif item.type == "number":
            if isinstance(value, bool):
                raise ValueError(f"{f.variable} in input form must be a valid number")
            if isinstance(value, str):
                try:
                    value = float(value) if any(c in value for c in ".eE") else int(value)
                except ValueError:
                    raise ValueError(f"{f.variable} in input form must be a valid number") from None
            elif not isinstance(value, int | float):
                raise ValueError(f"{f.variable} in input form must be a valid number")
        elif item.type == "checkbox" and not isinstance(value, bool):
            raise ValueError(f"{f.variable} in input form must be a boolean")
        cleaned[f.variable] = value
    return cleaned


def render_prompt(template: str, inputs: dict[str, Any]) -> str:
    """Replace ``{{var}}`` with input values; unknown variables stay literal. Values are de-templated so a
    user value containing ``{{x}}`` is not expanded again."""

    def _sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in inputs:
            return m.group(0)
        return PLACEHOLDER_RE.sub(r"{\1}", str(inputs[name]))

    return PLACEHOLDER_RE.sub(_sub, template)


# the on/off features of /parameters, in its order
FEATURES = ("suggested_questions_after_answer", "speech_to_text", "text_to_speech", "retriever_resource",
            "annotation_reply", "more_like_this")


def parameters_view(config: ModelConfig, system_parameters: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``GET /parameters`` body (reference §2.9); ``system_parameters``: the deployment's file limits
    (settings ``files``), Dify's defaults when not given."""
    d = config.to_wire()
    return {
        "opening_statement": config.opening_statement,
        "suggested_questions": config.suggested_questions,
        **{name: d[name] for name in FEATURES},
        "user_input_form": [{k: v.model_dump(mode="json", exclude_none=True) for k, v in item.items()}
                            for item in config.user_input_form],
        "sensitive_word_avoidance": _moderation_view(config.sensitive_word_avoidance),
        "file_upload": config.file_upload,
        "system_parameters": dict(system_parameters or SYSTEM_PARAMETERS),
    }


def graph_parameters_view(variables: list[dict[str, Any]], features: dict[str, Any],
                          system_parameters: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``GET /parameters`` body of a workflow or advanced-chat app (reference §2.9): the start node's
    variables as the form and the published workflow's ``features``; a feature they lack or get wrong (a graph's
    features are not validated on save) is off, as in Dify's get_parameters_from_feature_dict."""

    def feature(name: str) -> dict[str, Any]:
        raw = features.get(name)
        if isinstance(raw, dict):
            try:
                return Feature.model_validate(raw).model_dump(mode="json")
            except ValueError:
                pass
        return {"enabled": False}

    questions = features.get("suggested_questions")
    moderation = features.get("sensitive_word_avoidance")
    file_upload = features.get("file_upload")
    return {
        "opening_statement": str(features.get("opening_statement") or ""),
        "suggested_questions": [q for q in questions if isinstance(q, str)] if isinstance(questions, list) else [],
        **{name: feature(name) for name in FEATURES},
        "user_input_form": [{item.type: item.field.model_dump(mode="json", exclude_none=True)}
                            for item in start_form(variables)],
        # as served: an unusable stored setting is moderation off (load_moderation), shown in Dify's default shape
        "sensitive_word_avoidance": _moderation_view(load_moderation(moderation)[0] if isinstance(moderation, dict)
                                                     else SensitiveWordAvoidance()),
        "file_upload": file_upload if isinstance(file_upload, dict) else dict(DEFAULT_FILE_UPLOAD),
        "system_parameters": dict(system_parameters or SYSTEM_PARAMETERS),
    }


def _moderation_view(swa: SensitiveWordAvoidance) -> dict[str, Any]:
    """As stored (Dify echoes the dict); Dify's default shape when nothing was configured."""
    d = swa.model_dump(mode="json", exclude_none=True)
    return d if "config" in d else {"enabled": False, "type": "", "configs": [], **d}
