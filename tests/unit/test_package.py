import subprocess
import sys

import diffbook


def test_the_entry_points_are_the_modules_objects():
    from diffbook import guidance, samplers, schedules

    assert diffbook.sample is samplers.sample and diffbook.SAMPLERS is samplers.SAMPLERS
    assert diffbook.NoiseSchedule is schedules.NoiseSchedule
    assert diffbook.guided_sample is guidance.guided_sample
    for name in diffbook.__all__:
        assert getattr(diffbook, name) is not None
    assert set(diffbook.__all__) <= set(dir(diffbook))


def test_importing_the_package_does_not_import_jax():
    # Colab's install cell may upgrade JAX after diffbook is installed: the package's
    # import alone must not load the old JAX.
    code = "import sys, diffbook; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    try:
        diffbook.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected an AttributeError")
