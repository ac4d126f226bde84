"""Pier authorizer plugin in Python (componentize-py), world `authorizer`.

Policy (needs no host capability):
  * pull: allowed for everyone;
  * push / delete: only user `alice`, only on repositories under `alice/`;
  * everything else: deny("polyglot: <action> not allowed for <who>").
authenticate() always answers not-handled, so Pier checks its own users.

Independent of the WIT package version: only names from the generated
`wit_world` bindings are used, never the version string.
"""
import wit_world
from wit_world.imports import types
from componentize_py_types import Err


def _who(subject) -> str:
    if isinstance(subject, types.Subject_User):
        return subject.value.name
    if isinstance(subject, types.Subject_Robot):
        return "robot$" + subject.value.name
    return "anonymous"


class WitWorld(wit_world.WitWorld):
    def authorize(self, request: types.AccessRequest) -> types.Decision:
        action = request.action
        if action == types.Action.PULL:
            return types.Decision_Allow()
        if action in (types.Action.PUSH, types.Action.DELETE):
            subject = request.subject
            repo = request.repository or ""
            if (isinstance(subject, types.Subject_User)
                    and subject.value.name == "alice"
                    and repo.startswith("alice/")):
                return types.Decision_Allow()
        name = action.name.lower()
        return types.Decision_Deny(f"polyglot: {name} not allowed for {_who(request.subject)}")

    def authenticate(self, credentials: types.Credentials) -> types.Identity:
        raise Err(types.AuthError_NotHandled())
