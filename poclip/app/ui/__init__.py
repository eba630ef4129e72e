"""The Gradio page: Compare, Annotate, Train and Data tabs (one module each) over :class:`AppService`.

Handlers are plain functions of the service and the component values, so tests call them directly; they
call the service only. The public API is declared in one place (:mod:`poclip.app.ui.api`); the page's own
events are private. Every handler goes through the one error boundary (:mod:`poclip.app.ui.boundary`).
"""

from __future__ import annotations

import gradio as gr

from poclip.app.service import AppService
from poclip.app.ui.annotate import SHORTCUTS_JS, build_annotate
from poclip.app.ui.api import register_api
from poclip.app.ui.boundary import QUIET, store_errors_shown, user_errors
from poclip.app.ui.compare_page import build_compare
from poclip.app.ui.data import build_data
from poclip.app.ui.identity import browser_storage_key, sign_in_handler
from poclip.app.ui.train import build_train
from poclip.world.images import MAX_FILE_BYTES

# Phones: the Annotate picture and every label button fit on a 390x844 screen without scrolling.
CSS = """
#label-grid { display: grid !important; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr)); gap: 6px; }
#label-grid > button { min-width: 0 !important; }
#annotate-actions > button { min-width: 0 !important; }
@media (max-width: 600px) {
  #item-image img { max-height: 220px; object-fit: contain; }
  #label-grid { grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 4px; }
  #label-grid > button { padding: 6px 4px; font-size: 14px; }
  #annotate-help { display: none; }
  #page-intro { display: none; }
}
"""


def build_demo(service: AppService) -> gr.Blocks:
    """The whole app page."""
    on_space = bool(service.settings.space_id)
    # Uploaded files are deleted from Gradio's cache after an hour (checked hourly).
    with gr.Blocks(title="PO-CLIP: typographic attacks on CLIP", delete_cache=(3600, 3600)) as demo:
        register_api(service)  # first, so the public endpoints keep their plain names
        gr.Markdown("# PO-CLIP\nWrite a word on a picture and watch CLIP change its mind; help it learn not to.",
                    elem_id="page-intro")
        model_line = gr.Markdown(f"**Live model:** {service.model_info()}", elem_id="model-line")
        # The browser keeps its server-signed anonymous id; the storage key is public (see browser_storage_key).
        anon_id = gr.BrowserState("", storage_key="poclip-annotator", secret=browser_storage_key(service))
        admin_token = gr.State("")
        with gr.Row():
            if on_space:
                gr.LoginButton()
            handle = gr.Textbox("", label="Your handle (optional; kept with your labels)", max_lines=1, scale=3,
                                elem_id="handle")
        with gr.Accordion("Admin sign-in", open=False, elem_id="admin-signin"):
            with gr.Row():
                token_box = gr.Textbox("", label="Admin token", type="password", max_lines=1, scale=3,
                                       elem_id="admin-token")
                sign_in_btn = gr.Button("Sign in", scale=1, elem_id="sign-in-btn")
            sign_in_message = gr.Markdown(elem_id="sign-in-message")

        with gr.Tab("Compare", elem_id="compare-tab"):
            build_compare(service, handle, anon_id)
        with gr.Tab("Annotate", elem_id="annotate-tab"):
            build_annotate(service, handle, anon_id)
        with gr.Tab("Train", elem_id="train-tab"):
            train = build_train(service, admin_token)
        with gr.Tab("Data", elem_id="data-tab") as data_tab:
            data = build_data(service, admin_token)

        @user_errors
        def sign_in(token, oauth_token: gr.OAuthToken | None = None):
            return sign_in_handler(service, token, oauth_token)

        signed_in = sign_in_btn.click(sign_in, [token_box], [admin_token, sign_in_message],
                                      api_visibility="private", **QUIET)
        token_box.submit(sign_in, [token_box], [admin_token, sign_in_message], api_visibility="private", **QUIET)

        training_out = [model_line, *train["outputs"]]

        @store_errors_shown(len(training_out))
        def refresh_training():
            return (f"**Live model:** {service.model_info()}", *train["refresh"]())

        gr.Timer(3.0).tick(refresh_training, None, training_out, api_visibility="private", queue=False,
                           show_progress="hidden")
        demo.load(refresh_training, None, training_out, api_visibility="private")
        for trigger in (data_tab.select, signed_in.then):
            trigger(data["refresh"], admin_token, data["outputs"], api_visibility="private")
        gr.Timer(15.0).tick(data["refresh"], admin_token, data["outputs"], api_visibility="private",
                            show_progress="hidden")
        demo.load(service.visitors.annotator_token, anon_id, anon_id, api_visibility="private")  # server-signed id
    return demo


def launch_kwargs() -> dict:
    """Arguments for ``demo.launch`` that belong to the page rather than the server.

    Run history is off: Gradio would otherwise keep every call, uploads included, in the browser's storage.
    """
    return {"head": SHORTCUTS_JS, "theme": gr.themes.Soft(), "css": CSS, "run_history": False,
            "max_file_size": MAX_FILE_BYTES}
