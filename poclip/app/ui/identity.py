"""Who is using the page: the annotator (Hugging Face login, typed handle or the browser's anonymous id)
and whether they are an admin (signed in once with the token, or a Hugging Face login in the admin org)."""

from __future__ import annotations

import secrets

import gradio as gr

from poclip.app.service import AppService
from poclip.errors import UserError


def annotator_handle(handle: str | None, anon_id: str | None, profile: gr.OAuthProfile | None,
                     service: AppService) -> str:
    """Who is labelling: a token only this server can make, never what was typed.

    The Hugging Face login (signed by the server, which alone sees the OAuth profile), else the browser's
    server-signed anonymous id. A typed handle is only that identity's display name (:func:`keep_name` stores
    it once the action succeeded), so typing someone else's name cannot undo their labels or move their trust.
    An empty handle box means anonymous; a typed name that is blank once invisible characters are removed,
    reserved, or already another person's is refused (UserError) here, before anything is written.

    Returns:
        The signed token that acts (``hf:<user>.<sig>`` or ``anon-<id>.<sig>``).
    """
    if profile is not None:
        acting = service.identity.token_for(f"hf:{profile.username}")
    elif anon_id:
        service.identity.verify(anon_id)  # a typed name passed as the id would otherwise act as that name
        acting = anon_id
    else:
        raise UserError("No anonymous id: reload the page (API clients: pass the anonymous_id an earlier call "
                        "returned).")
    if handle and handle.strip():  # white space only counts as an empty box
        service.visitors.check_name(acting, handle)
    return acting


def keep_name(service: AppService, acting: str, handle: str | None) -> None:
    """After an action of ``acting`` succeeded (so its annotator exists), show the typed ``handle`` for it."""
    if handle and handle.strip():
        service.visitors.name(acting, handle)


def hf_orgs(oauth_token: gr.OAuthToken | None) -> list[str]:
    """The organisations of the logged-in Hugging Face user (empty when not logged in or offline)."""
    if oauth_token is None:
        return []
    try:
        from huggingface_hub import whoami

        return [org["name"] for org in whoami(token=oauth_token.token).get("orgs", [])]
    except Exception:  # no network or a revoked token: no org rights, not a crash
        return []


def admin_name(profile: gr.OAuthProfile | None) -> str | None:
    """The Hugging Face name an admin action is recorded under (None when not logged in: the token names
    nobody)."""
    return None if profile is None else profile.username


def sign_in_handler(service: AppService, token: str | None, oauth_token: gr.OAuthToken | None = None):
    """Check the admin token (or the Hugging Face login) once; returns (token kept for this page, message).

    The token stays in this page's server-side session state and is passed to every admin action, so both
    admin tabs work after one sign-in.
    """
    token = (token or "").strip()
    service.admin.require_admin(token or None, hf_orgs(oauth_token))
    return token, "Signed in as admin: the Train and Data tabs' admin actions are unlocked."


def browser_storage_key(service: AppService) -> str:
    """The key Gradio's BrowserState encrypts the stored anonymous id with: random, kept in the data dir so ids
    stored in browsers survive restarts.

    It is not a secret and protects nothing: the browser does the encrypting, so Gradio sends this key to every
    client in ``/config``. It is independent of the server secret; what makes an anonymous id usable only by
    its holder is the server's HMAC signature on it (:mod:`poclip.app.identity`), which no client can make.
    """
    path = service.settings.data_dir / "browser_state_secret"  # the file's name predates the above
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()
