"""Install PLPP: the engine and method under ``plpp``, hosts as ``plpp.trainers``, readers as ``plpp.datasets``."""

from setuptools import setup

setup(
    packages=["plpp", "plpp.engine", "plpp.results", "plpp.openclip", "plpp.proxy", "plpp.text", "plpp.tools",
              "plpp.trainers", "plpp.datasets"],
    package_dir={"plpp": "plpp", "plpp.trainers": "trainers", "plpp.datasets": "datasets"},
    package_data={"plpp.results": ["*.json"]},
)
