"""The web app: a Gradio-free service, the background trainer and the Gradio UI."""
