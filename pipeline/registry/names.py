"""What the registered model is called and the aliases the gate moves."""

CHAMPION = "champion"
CHALLENGER = "challenger"
SHA_TAG = "model.sha256"  # model-version tag: the SHA-256 of the registered model.keras


def model_name(params) -> str:
    """``register.model_name``, else ``<dataset>-classifier``."""
    return params.register.model_name or f"{params.data.dataset}-classifier"
