"""The YAML search space and the Keras Tuner HyperModel that searches it.

``space`` (pydantic + YAML only) imports fast, so configs validate before Keras loads;
import ``pipeline.search.hypermodel`` for the HyperModel itself.
"""

from pipeline.search.space import SearchSpace, load_search_space, values_at

__all__ = ["SearchSpace", "load_search_space", "values_at"]
