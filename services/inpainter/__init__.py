"""The inpainter service: fit a subject model, then inpaint masked views with it."""
