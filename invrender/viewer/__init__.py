"""Interactive relighting viewer (``invrender view``).

:mod:`invrender.viewer.render` turns a trained run, a :class:`~invrender.viewer.render.ViewerState`
and a camera into an image, with no GUI involved (the tests drive it directly);
:mod:`invrender.viewer.app` wires it to a viser server (the ``[viewer]`` extra), which streams the
server-side renders to the browser. Importing this package imports neither.
"""
