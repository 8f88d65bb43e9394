"""Identity and privacy routes: who am I, new sessions, erasing a session; and for the
admin, users and their keys, erasing and exporting one user's (or session's) data.

Erasure: the identity service deletes the stored turns, scrubs backups and exported training
sets and records the subject as erased (``echorag/learning/privacy.py``); then the
remembered turns are deleted from the vector store and short-term memory here.
"""

# No ``from __future__ import annotations`` in route modules: FastAPI reads the route
# annotations at runtime, and Serve's class-based ingress cannot resolve postponed ones.

from fastapi import Path, Query, Security

from deployments.auth import optional_caller, require_caller
from deployments.http_app import Admin, app
from echorag.identity.access import Caller, MeResponse, SessionResponse
from echorag.learning.erasure import ErasureReport, SubjectKind
from echorag.learning.privacy import SubjectConversations
from echorag.learning.users import IssuedKey, NewUserRequest, UserInfo, UsersResponse
from echorag.serving.schemas import ErrorResponse

USER_ERRORS = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
USER_ID = Path(..., min_length=1, max_length=200, description="A user id (usr_…, or the proxy's name for them).")
SESSION_ID = Path(..., min_length=1, max_length=128)


class UserRoutes:
    # -- the caller ---------------------------------------------------------------------------

    @app.get("/me", response_model=MeResponse, responses={401: {"model": ErrorResponse}})
    async def me(self, caller: Caller = Security(optional_caller)) -> MeResponse:
        """The server's auth mode and who the given key (or proxy) says you are."""
        mode = self.settings.auth_mode
        return MeResponse(auth_mode=mode, user_id=caller.user_id, name=caller.name, key_required=mode == "api_keys")

    @app.post("/sessions", response_model=SessionResponse, status_code=201, responses=USER_ERRORS)
    async def new_session(self, caller: Caller = Security(require_caller)) -> SessionResponse:
        """A new private session (``/chat`` without ``session_id`` starts one too)."""
        return SessionResponse(session_id=await self.sessions.issue(caller), user_id=caller.user_id)

    @app.delete("/sessions/{session_id}", response_model=ErasureReport, responses=USER_ERRORS)
    async def erase_own_session(self, session_id: str = SESSION_ID, caller: Caller = Security(require_caller)):
        """Delete everything stored of a session you hold: its turns, remembered vectors
        and short-term memory; it is never collected for training again."""
        return await self._erase("session", await self.sessions.hold(caller, session_id))

    # -- the admin: users and keys -----------------------------------------------------------

    @app.get("/admin/users", response_model=UsersResponse, dependencies=[Admin])
    async def list_users(self):
        return await self.identities.users.remote()

    @app.post("/admin/users", response_model=IssuedKey, status_code=201, dependencies=[Admin])
    async def add_user(self, request: NewUserRequest):
        """A new user and their first key; the key is in this response only."""
        return await self.identities.add_user.remote(request.name)

    @app.post("/admin/users/{user_id}/keys", response_model=IssuedKey, status_code=201, dependencies=[Admin])
    async def issue_key(self, user_id: str = USER_ID):
        """One more key for a user (to rotate: issue, then revoke the old one)."""
        return await self.identities.issue_key.remote(user_id)

    @app.post("/admin/users/{user_id}/revoke", response_model=UserInfo, dependencies=[Admin])
    async def revoke_user(self, user_id: str = USER_ID, key_id: str | None = Query(None, max_length=64)):
        """Revoke one key (``key_id``) or all of a user's keys; refused from the next request on."""
        return await self.identities.revoke_user.remote(user_id, key_id)

    @app.delete("/admin/users/{user_id}", response_model=ErasureReport, dependencies=[Admin])
    async def erase_user(self, user_id: str = USER_ID):
        """Delete a user, their keys and all their data (turns, backups, exports, vectors,
        memory); they are left out of every later training run."""
        return await self._erase("user", user_id)

    @app.get("/admin/users/{user_id}/conversations", response_model=SubjectConversations, dependencies=[Admin])
    async def user_conversations(self, user_id: str = USER_ID):
        """Every stored turn of a user: their data, for export."""
        return await self.identities.subject_conversations.remote("user", user_id)

    @app.delete("/admin/sessions/{session_id}", response_model=ErasureReport, dependencies=[Admin])
    async def erase_session(self, session_id: str = SESSION_ID):
        return await self._erase("session", session_id)

    @app.get("/admin/sessions/{session_id}/conversations", response_model=SubjectConversations, dependencies=[Admin])
    async def session_conversations(self, session_id: str = SESSION_ID):
        return await self.identities.subject_conversations.remote("session", session_id)

    # -- erasure ------------------------------------------------------------------------------

    async def _erase(self, kind: SubjectKind, subject: str) -> ErasureReport:
        report = await self.identities.erase.remote(kind, subject)  # first: nothing of theirs is stored again
        if self._pipeline is not None:
            await self._pipeline.remembered()  # turns being indexed land before they are deleted
        where = {"user_id": subject} if kind == "user" else {"session_id": subject}
        vectors = await self.retriever.forget.remote(where)
        if kind == "user":
            self.memory.forget(self.sessions.belongs(subject))
        else:
            self.memory.clear(subject)
        return report.model_copy(update={"vectors": vectors})
