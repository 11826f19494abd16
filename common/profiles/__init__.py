"""Device profiles shipped with fedprune (TOML files read by :mod:`common.cost_model`)."""
