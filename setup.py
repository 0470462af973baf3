"""Map the user's top-level folders onto the single ``worldloop`` import root (DESIGN.md §1)."""

from setuptools import find_packages, setup

PACKAGE_ROOTS = {
    "worldloop": "worldloop",
    "worldloop.model": "model",
    "worldloop.components": "components",
    "worldloop.pipelines": "pipelines",
    "worldloop.serving": "serving",
}


def _packages() -> list[str]:
    names: list[str] = []
    for name, folder in PACKAGE_ROOTS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    return names


setup(
    packages=_packages(),
    package_dir=PACKAGE_ROOTS,
    include_package_data=True,
    package_data={"worldloop.serving": ["web/*"]},  # the play page ships with the wheel
)
