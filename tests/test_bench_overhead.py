"""bench/overhead.py writes a project whose pinned search space and params still load."""

from pipeline.config import load_params
from pipeline.search import load_search_space
from tests.bench_helpers import load_bench


def test_the_overhead_bench_project_loads(tmp_path):
    module = load_bench("overhead")
    params_file = module.write_project(tmp_path, module.parse_args([]))
    params = load_params(params_file)
    space = load_search_space(tmp_path / params.tune.search_space)
    assert list(space.family_names) == [module.FAMILY]
    hp = module.fixed_hyperparameters()
    assert hp.values["family"] == module.FAMILY
