"""torch.hub entry points for harl's pretrained zoo.

    import torch
    model = torch.hub.load("<owner>/harl", "harl_resnet18_fashion_scenes")      # from GitHub
    model = torch.hub.load("/path/to/harl", "harl_resnet18_fashion_scenes", source="local")

Every entry of ``zoo/manifest.yaml`` is an entry point (``torch.hub.list`` shows them). The weights
are checked against the manifest's sha256 and loaded strictly into a plain torchvision model
(``fc = Identity``: ``model(x)`` gives pooled B×C features); pass ``format="timm"`` or
``format="harl"`` for the other model classes, ``pretrained=False`` for the bare architecture.
Files kept in the repository make the hub work offline. ``$HARL_ZOO_MANIFEST`` selects another
manifest, ``$HARL_CACHE`` the download cache.
"""

dependencies = ["torch", "torchvision", "lightning", "omegaconf", "safetensors", "yaml", "tqdm"]


def harl_resnet18_fashion_scenes(pretrained=True, format=None, progress=True, **kwargs):
    """ResNet-18 pretrained with HARL on the fashion-scenes demo dataset (see zoo/README.md)."""
    from harl.zoo.hub import hub_model

    return hub_model("harl_resnet18_fashion_scenes", pretrained=pretrained, format=format, progress=progress,
                     **kwargs)


def __getattr__(name):
    """Any other manifest entry, resolved at call time (adding weights needs no code change)."""
    if name.startswith("_"):
        raise AttributeError(name)
    from harl.zoo.hub import entry_names, make_entrypoint

    if name in entry_names():
        return make_entrypoint(name)
    raise AttributeError(f"hubconf has no entry point '{name}' (zoo entries: {', '.join(entry_names()) or 'none'})")


def __dir__():
    from harl.zoo.hub import entry_names

    return sorted(set(list(globals()) + entry_names()))
