"""Fine-tuning methods, one module each, registered by name (see `peftbench.methods.base`).

Adding a method: a module here with a `@register`ed `Method` subclass and a `conf/method/<name>.yaml`.
Every module in this package is imported by the registry (`methods.base.METHODS`), so the runner needs no edit.

A method from another package needs no edit here either: an entry point in the group `peftbench.methods`
(`my_method = "my_pkg.my_method"`, a module whose import registers it, or `"my_pkg.my_method:MyMethod"`, a
`Method` subclass registered on load), or `method.module=my_pkg.my_method` on the command line or in its YAML.
"""
