"""shading."""
