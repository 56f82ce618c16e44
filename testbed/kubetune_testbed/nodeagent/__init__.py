"""The local cluster's node agent: a kubelet stand-in that runs pods as local processes.

`make up` starts it beside kwok, as `python -m kubetune_testbed.nodeagent`. Its Node schedules like any other (CPUs,
memory, `nvidia.com/gpu`); the pods bound to it really run: the command of
each container (or, for the project's own images, the ENTRYPOINT and CMD of
their Dockerfiles), in the project's environment (no image is pulled), inside a
network namespace of its own with the DNS names of its headless Service's pods
in its /etc/hosts. Status, exit codes, termination messages, restart back-off,
probes, Events and `kubectl logs` work as with a kubelet.

    agent.py      the Node, its Lease, the pod watch; builds what the runners share
    runner.py     one pod's lifecycle: sandbox, volumes, containers, status, deletion
    node.py       the node's identity as a pod sees it: name, network, API address
    addresses.py  the pods' addresses on the pod network
    hosts.py      every pod's /etc/hosts, in step with its subdomain's pods
    podapi.py     what a pod needs from the API: ConfigMaps, Secrets, tokens, status, deletion
    container.py  one container as a process: start, exit, termination message, logs
    images.py     the project's images: ENTRYPOINT and CMD from their Dockerfiles
    probes.py     startup, liveness and readiness probes (httpGet, tcpSocket)
    podspec.py    env, volumes and /etc/hosts from the pod manifest (pure)
    podinit.py    the first process of a container: namespaces, mounts, exec
    network.py    the bridge, per-pod network namespaces and their cleanup
    logserver.py  the kubelet endpoint the API server proxies `kubectl logs` to
"""
