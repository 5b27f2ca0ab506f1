"""pretraining: RaSD's randomized synthesis engine, prototype disentangling learning and runner."""
