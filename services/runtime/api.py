"""Runtime HTTP API under /v1 (reference §2.1–2.11): parse, call the service, shape the response.

The gateway authenticates the app key and forwards the caller in identity headers; it forwards the
full path, so routes are declared with the /v1 prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile as FormFile
from starlette.responses import FileResponse, Response, StreamingResponse

from services.runtime.service import Runtime
from services.runtime.service.resume import last_event_id as last_event_id_of
from services.runtime.service.runs import PING, Run
from services.runtime.workflow.service import WorkflowTask
from shared.context import Context
from shared.errors import INVALID_JSON, ApiError
from shared.http import create_base_app
from shared.identity import Caller, caller_from_request
from shared.metrics import ACTIVE_STREAMS

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ACTIVE = ACTIVE_STREAMS.labels("runtime")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # SDKs send fields we do not use (retriever_from, trace_id …)


class CompletionBody(_Body):
    inputs: dict[str, Any] | None = None
    query: str | None = ""
    response_mode: Literal["blocking", "streaming"] | None = None
    user: str | None = None
    files: list[Any] | None = None


class ChatBody(CompletionBody):
    query: str | None = None
    conversation_id: str | None = None
    auto_generate_name: bool | None = True
    workflow_id: str | None = None  # advanced-chat: run this published version instead of the current one


class UserBody(_Body):
    user: str | None = None


class FeedbackBody(UserBody):
    rating: str | None = None
    content: str | None = None


class WorkflowBody(_Body):
    inputs: dict[str, Any] | None = None
    response_mode: Literal["blocking", "streaming"] | None = None
    user: str | None = None
    files: list[Any] | None = None


class VariableBody(UserBody):
    value: Any = None


class AnnotationBody(_Body):
    question: Any = None  # checked by the service, for Dify's messages
    answer: Any = None


class RenameBody(UserBody):
    name: str | None = None
    auto_generate: bool = False


class TextToAudioBody(UserBody):
    message_id: str | None = None
    text: str | None = None
    voice: str | None = None
    streaming: bool | None = None  # accepted; a long text's audio streams anyway (docs/audio.md)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def sse(run: Run | WorkflowTask, ping_interval: float) -> AsyncIterator[bytes]:
    """The run's events as SSE; a client that goes away cancels only this reader, never the run."""
    channel = run.channel
    assert channel is not None
    _ACTIVE.inc()
    try:
        while True:
            batch = await channel.get_batch(ping_interval)
            if batch is None:
                return
            yield b"".join(batch) if batch else PING
    finally:
        _ACTIVE.dec()


async def counted(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    _ACTIVE.inc()
    try:
        async for chunk in events:
            yield chunk
    finally:
        _ACTIVE.dec()


def caller_dependency(secret: str) -> Any:
    """The gateway's caller as a route dependency; declared before the body, so an unauthenticated call is a
    401 first."""

    async def identify(request: Request) -> Caller:  # async: a sync dependency would cost a thread hop
        return caller_from_request(request, secret)

    return Depends(identify)


def build_router(rt: Runtime, secret: str) -> APIRouter:
    router = APIRouter(prefix="/v1")
    ping_interval = rt.settings.ping_interval
    who = caller_dependency(secret)

    async def respond(run: Run | WorkflowTask) -> Response:
        if run.channel is not None:
            return StreamingResponse(
                sse(run, ping_interval), media_type="text/event-stream", headers=SSE_HEADERS
            )
        if isinstance(run, WorkflowTask):  # advanced-chat
            return json_response(await rt.chatflow.result(run))
        return json_response(await rt.chat.result(run))

    @router.post("/completion-messages")
    async def completion_messages(body: CompletionBody, caller: Caller = who) -> Response:
        run = await rt.chat.create(
            caller,
            endpoint="completion",
            user=body.user,
            inputs=body.inputs,
            query=body.query,
            conversation_id=None,
            streaming=body.response_mode == "streaming",
            files=body.files,
        )
        return await respond(run)

    @router.post("/chat-messages")
    async def chat_messages(body: ChatBody, caller: Caller = who) -> Response:
        run = await rt.chat.create(
            caller,
            endpoint="chat",
            user=body.user,
            inputs=body.inputs,
            query=body.query,
            conversation_id=body.conversation_id,
            streaming=body.response_mode == "streaming",
            files=body.files,
            auto_name=bool(body.auto_generate_name),  # Dify: null turns it off too
            workflow_id=body.workflow_id or None,
        )
        return await respond(run)

    async def run_workflow(body: WorkflowBody, caller: Caller, workflow_id: str | None = None) -> Response:
        task = await rt.workflows.run(caller, inputs=body.inputs, user=body.user,
                                      streaming=body.response_mode == "streaming", workflow_id=workflow_id,
                                      files=body.files)
        if task.channel is not None:
            return StreamingResponse(sse(task, ping_interval), media_type="text/event-stream", headers=SSE_HEADERS)
        return json_response(await rt.workflows.result(task))

    @router.post("/workflows/run")
    async def workflows_run(body: WorkflowBody, caller: Caller = who) -> Response:
        return await run_workflow(body, caller)

    @router.post("/workflows/{workflow_id}/run")
    async def workflows_run_version(workflow_id: str, body: WorkflowBody, caller: Caller = who) -> Response:
        return await run_workflow(body, caller, workflow_id)

    @router.get("/workflows/run/{run_id}")
    async def workflow_run(run_id: str, caller: Caller = who) -> Response:
        return json_response(await rt.workflows.get_run(caller, run_id))

    @router.post("/workflows/tasks/{task_id}/stop")
    @router.post("/workflows/{task_id}/stop")  # the legacy path dify-client-python falls back to
    async def stop_workflow(task_id: str, body: UserBody, caller: Caller = who) -> Response:
        await rt.workflows.stop(caller, task_id, body.user)
        return json_response({"result": "success"})

    async def replay(request: Request, found: tuple[str, bool, bool], last_event_id: str | None) -> Response:
        after = last_event_id_of(request.headers.get("last-event-id"), last_event_id)
        task_id, finished, chat_workflow = found
        return StreamingResponse(counted(rt.resume.events(task_id, after, finished, chat_workflow)),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

    @router.get("/workflows/run/{run_id}/events")
    async def workflow_events(request: Request, run_id: str, caller: Caller = who, user: str | None = None,
                              last_event_id: str | None = None) -> Response:
        return await replay(request, await rt.resume.workflow_task(caller, run_id, user), last_event_id)

    @router.get("/workflow/{task_id}/events")  # Dify's newest path: the same stream, found by the task id
    async def workflow_task_events(request: Request, task_id: str, caller: Caller = who, user: str | None = None,
                                   last_event_id: str | None = None) -> Response:
        return await replay(request, await rt.resume.workflow_task(caller, task_id, user, by_task=True),
                            last_event_id)

    @router.get("/chat-messages/{task_id}/events")
    @router.get("/completion-messages/{task_id}/events")
    async def chat_events(request: Request, task_id: str, caller: Caller = who, user: str | None = None,
                          last_event_id: str | None = None) -> Response:
        return await replay(request, await rt.resume.chat_task(caller, task_id, user), last_event_id)

    @router.get("/workflows/logs")
    async def workflow_logs(
        caller: Caller = who, keyword: str | None = None, status: str | None = None, page: int = 1,
        limit: int = 20, created_at__before: datetime | None = None, created_at__after: datetime | None = None,
        created_by_end_user_session_id: str | None = None, created_by_account: str | None = None,
    ) -> Response:
        return json_response(await rt.workflows.logs(
            caller, keyword=keyword, status=status, page=page, limit=limit, before=created_at__before,
            after=created_at__after, session_id=created_by_end_user_session_id, account_email=created_by_account))

    @router.get("/conversations/{conversation_id}/variables")
    async def conversation_variables(conversation_id: str, caller: Caller = who, user: str | None = None,
                                     last_id: str | None = None, limit: int = 20,
                                     variable_name: str | None = None) -> Response:
        return json_response(await rt.chatflow.variables(caller, conversation_id, user=user, last_id=last_id,
                                                         limit=limit, variable_name=variable_name))

    @router.put("/conversations/{conversation_id}/variables/{variable_id}")
    @router.patch("/conversations/{conversation_id}/variables/{variable_id}")  # dify-client sends PATCH
    async def update_conversation_variable(conversation_id: str, variable_id: str, body: VariableBody,
                                           caller: Caller = who) -> Response:
        return json_response(await rt.chatflow.update_variable(caller, conversation_id, variable_id,
                                                               value=body.value, user=body.user))

    @router.post("/completion-messages/{task_id}/stop")
    async def stop_completion(task_id: str, body: UserBody, caller: Caller = who) -> Response:
        await rt.chat.stop(caller, endpoint="completion", task_id=task_id, user=body.user)
        return json_response({"result": "success"})

    @router.post("/chat-messages/{task_id}/stop")
    async def stop_chat(task_id: str, body: UserBody, caller: Caller = who) -> Response:
        await rt.chat.stop(caller, endpoint="chat", task_id=task_id, user=body.user)
        return json_response({"result": "success"})

    @router.get("/messages")
    async def messages(
        conversation_id: str | None = None,
        first_id: str | None = None,
        limit: int = 20,
        user: str | None = None,
        caller: Caller = who,
    ) -> Response:
        return json_response(
            await rt.history.messages(
                caller, user=user, conversation_id=conversation_id, first_id=first_id, limit=limit
            )
        )

    @router.post("/messages/{message_id}/feedbacks")
    async def feedback(message_id: str, body: FeedbackBody, caller: Caller = who) -> Response:
        await rt.history.feedback(
            caller, message_id, rating=body.rating, user=body.user, content=body.content
        )
        return json_response({"result": "success"})

    @router.get("/messages/{message_id}/suggested")
    async def suggested(message_id: str, caller: Caller = who, user: str | None = None) -> Response:
        return json_response({"result": "success",
                              "data": await rt.extras.suggested(caller, message_id, user=user)})

    @router.get("/end-users/{end_user_id}")
    async def end_user(end_user_id: str, caller: Caller = who) -> Response:
        return json_response(await rt.extras.end_user(caller, end_user_id))

    @router.get("/app/feedbacks")
    async def app_feedbacks(caller: Caller = who, page: int = 1, limit: int = 20) -> Response:
        return json_response(await rt.extras.feedbacks(caller, page=page, limit=limit))

    @router.get("/conversations")
    async def conversations(
        user: str | None = None,
        last_id: str | None = None,
        limit: int = 20,
        sort_by: str = "-updated_at",
        caller: Caller = who,
    ) -> Response:
        return json_response(
            await rt.history.conversations(caller, user=user, last_id=last_id, limit=limit, sort_by=sort_by)
        )

    @router.delete("/conversations/{conversation_id}")
    async def delete_conversation(request: Request, conversation_id: str, caller: Caller = who) -> Response:
        # DELETE carries its user in an optional JSON body (the SDKs send one)
        raw = await request.body()
        user = None
        if raw.strip():
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ApiError(400, "bad_request", INVALID_JSON) from None
            user = UserBody.model_validate(data).user if isinstance(data, dict) else None
        await rt.history.delete_conversation(caller, conversation_id, user=user)
        return Response(status_code=204)

    @router.post("/conversations/{conversation_id}/name")
    async def rename_conversation(conversation_id: str, body: RenameBody, caller: Caller = who) -> Response:
        return json_response(
            await rt.history.rename_conversation(
                caller, conversation_id, name=body.name, auto_generate=body.auto_generate, user=body.user
            )
        )

    @router.post("/files/upload")
    async def upload_file(request: Request, caller: Caller = who) -> Response:
        parts: list[FormFile] = []
        user = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=10)
            parts = [v for _, v in form.multi_items() if isinstance(v, FormFile)]
            user = form.get("user") if isinstance(form.get("user"), str) else None
            if len(parts) > 1:
                raise ApiError(400, "too_many_files", "Only one file is allowed.")
            if parts and not isinstance(form.get("file"), FormFile):
                parts = []  # a file part under another name is not the upload
        if not parts:
            raise ApiError(400, "no_file_uploaded", "Please upload your file.")
        return json_response(await rt.files.upload(caller, parts[0].filename, parts[0].file, user), 201)

    @router.post("/audio-to-text")
    async def audio_to_text(request: Request, caller: Caller = who) -> Response:
        part: FormFile | None = None
        user = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=10)
            for field in ("file", "audio_file"):  # older dify-client builds send `audio_file`
                found = form.get(field)
                if isinstance(found, FormFile):
                    part = found
                    break
            user = form.get("user") if isinstance(form.get("user"), str) else None
        name, ctype, data = (part.filename, part.content_type, part.file) if part else (None, None, None)
        return json_response(await rt.audio.transcribe(caller, name, ctype, data, user))

    @router.post("/text-to-audio")
    async def text_to_audio(body: TextToAudioBody, caller: Caller = who) -> Response:
        speech = await rt.audio.synthesize(caller, message_id=body.message_id, text=body.text, voice=body.voice,
                                           user=body.user)
        if speech.rest is None:
            return Response(speech.first, media_type=speech.media_type)

        async def pieces() -> AsyncIterator[bytes]:  # a long text: each piece's audio as soon as it is made
            yield speech.first
            async for audio in speech.rest:
                yield audio

        return StreamingResponse(pieces(), media_type=speech.media_type)

    @router.get("/files/{file_id}/preview")
    async def preview_file(file_id: str, caller: Caller = who, as_attachment: bool = False,
                           user: str | None = None) -> Response:
        return file_response(await rt.files.preview(caller, file_id), as_attachment)

    @router.get("/parameters")
    async def parameters(caller: Caller = who) -> Response:
        return json_response(await rt.history.parameters(caller))

    @router.get("/info")
    async def info(caller: Caller = who) -> Response:
        return json_response(await rt.history.info(caller))

    @router.get("/meta")
    async def meta(caller: Caller = who) -> Response:
        return json_response(await rt.history.meta(caller))

    @router.get("/site")
    async def site(caller: Caller = who) -> Response:
        return json_response(await rt.extras.site(caller))

    # -- annotations (services/runtime/service/annotations.py, reference §2.16) -------------------------
    @router.get("/apps/annotations")
    async def annotations(caller: Caller = who, page: int = 1, limit: int = 20,
                          keyword: str | None = None) -> Response:
        return json_response(await rt.annotations.list_annotations(caller, page=page, limit=limit, keyword=keyword))

    @router.post("/apps/annotations")
    async def create_annotation(body: AnnotationBody, caller: Caller = who) -> Response:
        return json_response(await rt.annotations.create(caller, question=body.question, answer=body.answer), 201)

    @router.put("/apps/annotations/{annotation_id}")
    async def update_annotation(annotation_id: str, body: AnnotationBody, caller: Caller = who) -> Response:
        return json_response(await rt.annotations.update(caller, annotation_id, question=body.question,
                                                         answer=body.answer))

    @router.delete("/apps/annotations/{annotation_id}")
    async def delete_annotation(annotation_id: str, caller: Caller = who) -> Response:
        await rt.annotations.delete(caller, annotation_id)
        return Response(status_code=204)

    @router.post("/apps/annotation-reply/{action}")
    async def annotation_reply(request: Request, action: str, caller: Caller = who) -> Response:
        raw = await request.body()  # disable needs no body; the SDK sends the same three fields for both
        data: Any = {}
        if raw.strip():
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ApiError(400, "bad_request", INVALID_JSON) from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_param", "The request body must be a JSON object.")
        return json_response(await rt.annotations.action(caller, action, data))

    @router.get("/apps/annotation-reply/{action}/status/{job_id}")
    async def annotation_reply_status(action: str, job_id: str, caller: Caller = who) -> Response:
        return json_response(await rt.annotations.status(caller, action, job_id))

    return router


def file_response(p: Any, as_attachment: bool = False) -> Response:
    """A stored file's bytes (a services.runtime.service.files.Preview), its temporary copy removed after."""
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"}
    if p.mime_type in ("text/html", "image/svg+xml"):  # never run a user's markup on the API's origin
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    return FileResponse(p.path, media_type=p.mime_type, filename=p.filename, headers=headers,
                        content_disposition_type="attachment" if as_attachment else "inline",
                        background=BackgroundTask(p.path.unlink, missing_ok=True))


def public_router(rt: Runtime) -> APIRouter:
    """Routes without a key: the signed URLs of the files tools make (the signature is the permission)."""
    router = APIRouter()

    @router.api_route("/files/tools/{name}", methods=["GET", "HEAD"])
    async def tool_file(name: str, timestamp: str = "", nonce: str = "", sign: str = "",
                        as_attachment: bool = False) -> Response:
        p = await rt.files.signed_tool_file(name, timestamp, nonce, sign)
        # keyless and on the API's origin: only images open inline, anything else downloads
        return file_response(p, as_attachment or not p.mime_type.startswith("image/"))

    return router


def create_app(ctx: Context) -> FastAPI:
    app = create_base_app("runtime", checks={"database": ctx.db.ping, "nats": ctx.bus.ping})
    rt = Runtime(ctx)
    app.state.runtime = rt
    app.include_router(build_router(rt, ctx.internal_secret))
    app.include_router(public_router(rt))
    return app
