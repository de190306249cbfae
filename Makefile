# The Grafana datasource plugin: see plugin/Makefile and docs/plugin.md.
.PHONY: plugin
plugin:
	$(MAKE) -C plugin plugin
