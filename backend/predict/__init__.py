"""The prediction pipeline and what schedules it: admission slots, budgets, warm-up, faults."""
