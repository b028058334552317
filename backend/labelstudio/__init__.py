"""Label Studio's API through label-studio-sdk: one client for jobs, corrections and memory."""
