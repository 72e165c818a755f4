"""Plug-ins for other frameworks; each depends only on that framework's core package."""
