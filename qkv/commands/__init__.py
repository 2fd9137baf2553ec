"""The subcommands of ``qkv``, each handler beside its parser: ``runs`` (data, train,
evaluate, export, average, plot), ``inference`` (generate, classify, detect, translate,
embed, fill-mask, complete) and ``analysis`` (probe, analyze, explore)."""
