"""``qkv explore``: one page in the browser to look inside a run's attention.

``serve(run_dir)`` loads the model once and serves the page (``static/``: plain HTML,
vanilla JavaScript and canvas, nothing from the network) and the JSON API it calls
(``server``: HTTP; ``api``: what each endpoint computes, through ``qkv.analysis``).
"""
from .api import BadRequest, Explorer
from .server import make_server, serve

__all__ = ["BadRequest", "Explorer", "make_server", "serve"]
