"""The playground: GraphiQL served from assets shipped in the package, opened on examples of the collections."""

from tidings.playground.examples import example_tabs
from tidings.playground.page import ASSETS_PATH, Playground

__all__ = ["ASSETS_PATH", "Playground", "example_tabs"]
