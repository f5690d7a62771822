"""Test-suite configuration: the service fixtures come from plugin modules."""

pytest_plugins = ["tests.fix_pg", "tests.fix_mqtt", "tests.fix_cli"]
