"""comfyd's HTTP edge: routes, auth, limits and the websocket hub of `comfyd.server`.

Nothing here imports torch: the executor is built lazily through `Services.executor_factory`.
"""
