"""What the sign-in page and the API say when a directory sign-in fails (apps.accounts.backends
notes why on the request). Apart from the backends, so that saying it does not import them."""

UNREACHABLE = (
    "The company directory cannot be reached right now, so directory accounts cannot sign in. "
    "Try again in a few minutes; local accounts still work."
)
DISABLED = "This account is disabled in vmportal. Ask a vmportal admin to enable it."
