"""The web console: sign in with an API token, submit and watch jobs, compare before and after in 3D."""
