"""The coordinator: the public API of TIRE; runs the ring schedule over the stage services and keeps
durable job state."""
