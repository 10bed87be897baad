"""Glidein mode (``pilot start``): the claim–run–report loop and the scheduler client."""
