"""The catalogue of official BEiT-family checkpoints, as data.

Each entry names where the weights live (a Hugging Face repo, a timm hub
tag, the original release file), the architecture they need, how images
are preprocessed, the label set, the licence and the published accuracy.
`from_preset(name)` downloads the first available source, converts it once
and caches the result (see keras_beit/convert/catalogue.py). Published
numbers are the authors' own (microsoft/unilm READMEs, DiT and data2vec
papers); timm's re-measurements are given where timm hosts the weights.
"""

BASE = dict(hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072, patch_size=16)
LARGE = dict(hidden_dim=1024, num_layers=24, num_heads=16, intermediate_dim=4096, patch_size=16)

# Position information per family (see the README's loader section).
PER_LAYER = dict(use_relative_position_bias=True)
SHARED = dict(use_shared_relative_position_bias=True)
ABSOLUTE = dict(use_absolute_position_embeddings=True)

V1_PIXELS = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
IMAGENET_PIXELS = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic")

UNILM_V1 = "https://github.com/addf400/files/releases/download/v1.0/"
UNILM_V2 = "https://github.com/addf400/files/releases/download/BEiT-v2/"
MIT_UNILM = "MIT (microsoft/unilm); the Hugging Face model cards say apache-2.0"
RVL_CDIP_LABELS = (
    "letter", "form", "email", "handwritten", "advertisement", "scientific report",
    "scientific publication", "specification", "file folder", "news article", "budget",
    "invoice", "presentation", "questionnaire", "resume", "memo",
)


def _entry(description, task, size, image_size, position, pixels, sources, licence,
           num_classes=None, labels=None, metrics=None, **architecture):
    return {
        "description": description,
        "task": task,
        "architecture": {**size, "image_size": image_size, **position, **architecture},
        "preprocessing": {"image_size": (image_size, image_size), **pixels},
        "num_classes": num_classes,
        "labels": labels,
        "sources": sources,
        "license": licence,
        "metrics": metrics or {},
    }


def _v1_classifier(size_name, size, image_size, top1, top5, timm_top1=None):
    stem = f"beit_{size_name}_patch16_{image_size}"
    sources = {
        "hf": f"microsoft/beit-{size_name}-patch16-{image_size}",
        "timm": f"timm/{stem}.in22k_ft_in22k_in1k",
        "unilm": f"{UNILM_V1}{stem}_pt22k_ft22kto1k.pth",
    }
    metrics = {"imagenet_top1": top1, "imagenet_top5": top5}
    if timm_top1:
        metrics["imagenet_top1_timm"] = timm_top1
    return _entry(
        f"BEiT-{size_name[0].upper()}/16 at {image_size}: pre-trained on ImageNet-22k (MIM), "
        "fine-tuned on ImageNet-22k then ImageNet-1k.",
        "image_classifier", size, image_size, PER_LAYER, V1_PIXELS, sources, MIT_UNILM,
        num_classes=1000, labels="imagenet-1k", metrics=metrics,
        layer_scale_init_value=0.1 if size is BASE else 1e-5,
    )


def _v2(size_name, size, tag, num_classes, top1, timm_top1, description):
    stem = f"beitv2_{size_name}_patch16_224"
    return _entry(
        f"BEiT v2-{size_name[0].upper()}/16 at 224: VQ-KD MIM pre-training on ImageNet-1k, {description}.",
        "image_classifier", size, 224, PER_LAYER, IMAGENET_PIXELS,
        {"timm": f"timm/{stem}.{tag}"}, "apache-2.0 (timm); MIT (microsoft/unilm)",
        num_classes=num_classes, labels="imagenet-1k" if num_classes == 1000 else "imagenet-22k",
        metrics={"imagenet_top1": top1, "imagenet_top1_timm": timm_top1} if top1 else {},
        layer_scale_init_value=1e-5,
    )


CATALOGUE = {
    # BEiT v1, masked-image-modeling pre-training on ImageNet-22k.
    **{
        f"beit_{n}_patch16_224_pt22k": _entry(
            f"BEiT-{n[0].upper()}/16 pre-trained with masked image modeling on ImageNet-22k; "
            "includes the MIM head (DALL-E visual tokens, vocabulary 8192).",
            "masked_image_modeler", s, 224, SHARED, V1_PIXELS,
            {"hf": f"microsoft/beit-{n}-patch16-224-pt22k", "unilm": f"{UNILM_V1}beit_{n}_patch16_224_pt22k.pth"},
            MIT_UNILM, num_classes=8192, labels="dall-e visual tokens", use_mask_token=True,
        )
        for n, s in (("base", BASE), ("large", LARGE))
    },
    # BEiT v1, intermediate fine-tuning on ImageNet-22k (the README's recommended starting point).
    **{
        f"beit_{n}_patch16_224_pt22k_ft22k": _entry(
            f"BEiT-{n[0].upper()}/16 pre-trained on ImageNet-22k and fine-tuned on its 21841 classes.",
            "image_classifier", s, 224, PER_LAYER, V1_PIXELS,
            {
                "hf": f"microsoft/beit-{n}-patch16-224-pt22k-ft22k",
                "timm": f"timm/beit_{n}_patch16_224.in22k_ft_in22k",
                "unilm": f"{UNILM_V1}beit_{n}_patch16_224_pt22k_ft22k.pth",
            },
            MIT_UNILM, num_classes=21841, labels="imagenet-22k",
        )
        for n, s in (("base", BASE), ("large", LARGE))
    },
    # BEiT v1, ImageNet-1k fine-tuned (README top-1 / top-5; timm's re-measurement).
    "beit_base_patch16_224": _v1_classifier("base", BASE, 224, 85.2, 97.6, 85.238),
    "beit_base_patch16_384": _v1_classifier("base", BASE, 384, 86.8, 98.1, 86.814),
    "beit_large_patch16_224": _v1_classifier("large", LARGE, 224, 87.4, 98.3, 87.486),
    "beit_large_patch16_384": _v1_classifier("large", LARGE, 384, 88.4, 98.6, 88.380),
    "beit_large_patch16_512": _v1_classifier("large", LARGE, 512, 88.6, 98.66, 88.576),
    # BEiT v1, ADE20K semantic segmentation (UperNet, 640 crops, 160k iterations).
    "beit_base_patch16_640_ade20k": _entry(
        "BEiT-B/16 with UperNet and an FCN auxiliary head, fine-tuned on ADE20K at 640.",
        "image_segmenter", BASE, 640, PER_LAYER, V1_PIXELS,
        {"hf": "microsoft/beit-base-finetuned-ade-640-640", "unilm": f"{UNILM_V1}beit_base_patch16_640_pt22k_ft22ktoade20k.pth"},
        MIT_UNILM, num_classes=150, labels="ade20k",
        metrics={"ade20k_miou": 53.6, "ade20k_miou_multiscale_flip": 54.2},
        out_indices=(3, 5, 7, 11), use_fpn=True,
    ),
    "beit_large_patch16_640_ade20k": _entry(
        "BEiT-L/16 with UperNet and an FCN auxiliary head, fine-tuned on ADE20K at 640.",
        "image_segmenter", LARGE, 640, PER_LAYER, V1_PIXELS,
        {"hf": "microsoft/beit-large-finetuned-ade-640-640", "unilm": f"{UNILM_V1}beit_large_patch16_640_pt22k_ft22ktoade20k.pth"},
        MIT_UNILM, num_classes=150, labels="ade20k",
        metrics={"ade20k_miou": 56.7, "ade20k_miou_multiscale_flip": 57.0},
        out_indices=(7, 11, 15, 23), use_fpn=True,
    ),
    # BEiT v2 (VQ-KD tokenizer), as timm hosts them.
    "beitv2_base_patch16_224": _v2("base", BASE, "in1k_ft_in22k_in1k", 1000, 86.5, 86.494, "fine-tuned on ImageNet-22k then ImageNet-1k"),
    "beitv2_base_patch16_224_in1k": _v2("base", BASE, "in1k_ft_in1k", 1000, 85.5, 85.596, "fine-tuned on ImageNet-1k"),
    "beitv2_base_patch16_224_in22k": _v2("base", BASE, "in1k_ft_in22k", 21841, None, None, "fine-tuned on ImageNet-22k"),
    "beitv2_large_patch16_224": _v2("large", LARGE, "in1k_ft_in22k_in1k", 1000, 88.4, 88.406, "fine-tuned on ImageNet-22k then ImageNet-1k"),
    "beitv2_large_patch16_224_in1k": _v2("large", LARGE, "in1k_ft_in1k", 1000, 87.3, 87.414, "fine-tuned on ImageNet-1k"),
    "beitv2_large_patch16_224_in22k": _v2("large", LARGE, "in1k_ft_in22k", 21841, None, None, "fine-tuned on ImageNet-22k"),
    # DiT: the BEiT architecture with absolute positions, pre-trained on IIT-CDIP document images.
    **{
        f"dit_{n}_patch16_224": _entry(
            f"DiT-{n[0].upper()}/16 pre-trained with masked image modeling on 42M IIT-CDIP document images.",
            "masked_image_modeler", s, 224, ABSOLUTE, V1_PIXELS, {"hf": f"microsoft/dit-{n}"},
            MIT_UNILM, num_classes=8192, labels="dit visual tokens", use_mask_token=True,
        )
        for n, s in (("base", BASE), ("large", LARGE))
    },
    **{
        f"dit_{n}_patch16_224_rvlcdip": _entry(
            f"DiT-{n[0].upper()}/16 fine-tuned on RVL-CDIP document classification (16 classes).",
            "image_classifier", s, 224, ABSOLUTE, V1_PIXELS, {"hf": f"microsoft/dit-{n}-finetuned-rvlcdip"},
            MIT_UNILM, num_classes=16, labels=RVL_CDIP_LABELS, metrics={"rvlcdip_accuracy": acc},
        )
        for n, s, acc in (("base", BASE, 92.11), ("large", LARGE, 92.69))
    },
    # data2vec-vision: the BEiT architecture, self-distillation pre-training on ImageNet-1k.
    **{
        f"data2vec_vision_{n}_patch16_224": _entry(
            f"data2vec-vision {n} pre-trained on ImageNet-1k (no head; final LayerNorm, CLS pooling).",
            "backbone", s, 224, SHARED, V1_PIXELS, {"hf": f"facebook/data2vec-vision-{n}"},
            "CC-BY-NC (data2vec README); the Hugging Face cards say apache-2.0", use_mean_pooling=False,
        )
        for n, s in (("base", BASE), ("large", LARGE))
    },
    **{
        f"data2vec_vision_{n}_patch16_224_ft1k": _entry(
            f"data2vec-vision {n} fine-tuned on ImageNet-1k.",
            "image_classifier", s, 224, PER_LAYER, V1_PIXELS, {"hf": f"facebook/data2vec-vision-{n}-ft1k"},
            "CC-BY-NC (data2vec README); the Hugging Face cards say apache-2.0",
            num_classes=1000, labels="imagenet-1k",
            metrics={"imagenet_top1_paper": top1},
        )
        for n, s, top1 in (("base", BASE, 84.2), ("large", LARGE, 86.6))
    },
}

# Trained by this project (presets/train_digits.py) and shipped inside the package,
# so the README's main job and the guides run with real trained weights offline.
BUNDLED = {
    "beit_tiny_digits": {
        "description": "A 4-block BEiT (hidden 64, patch 8, 32x32 RGB) trained from scratch on "
        "scikit-learn's handwritten digits; 94.4% accuracy on 360 held-out digits.",
        "task": "image_classifier",
        "architecture": dict(
            hidden_dim=64, num_layers=4, num_heads=4, intermediate_dim=128, patch_size=8,
            image_size=32, **PER_LAYER,
        ),
        "preprocessing": {"image_size": (32, 32), **V1_PIXELS},
        "num_classes": 10,
        "labels": tuple(str(d) for d in range(10)),
        "sources": {"bundled": "keras_beit/assets/beit_tiny_digits"},
        "license": "Apache-2.0 (keras_beit); data: scikit-learn digits (BSD-3-Clause)",
        "metrics": {"digits_test_accuracy": 0.9444},
    },
}
