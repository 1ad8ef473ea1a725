"""The refiner service: ``tire.v1.RefinerService`` (make all views of an asset agree)."""
