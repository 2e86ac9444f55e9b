"""What the engine and the operator share: the scheduler settings, the admin API's wire
models and client, the probe file's header. Depends on neither of them."""
