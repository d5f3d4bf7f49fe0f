"""Engine-level default config (Dassl / CoOp key names).

Only keys the engine, data pipeline and backbone loader read live here. Each trainer,
component and dataset adds its own node with a function registered through
:func:`configs.registry.register_config` (see ``configs/config.py``).
"""
from yacs.config import CfgNode as CN

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_cfg_default() -> CN:
    """A fresh copy of the engine defaults (no method keys)."""
    _C = CN()
    _C.VERSION = 1  # config format version
    _C.OUTPUT_DIR = "./output"  # where logs, checkpoints, config.yaml and metrics go
    _C.RESUME = ""  # directory to resume from ("" = OUTPUT_DIR if it holds checkpoints)
    _C.SEED = -1  # random seed; any value >= 0 (0 included) fixes it, -1 = random
    _C.USE_CUDA = True  # use a GPU when one is available
    _C.VERBOSE = True  # print the config at start

    _C.INPUT = CN()
    _C.INPUT.SIZE = ()  # input image size (H, W); () = the backbone's own resolution
    _C.INPUT.INTERPOLATION = "bilinear"  # bilinear | bicubic | nearest
    _C.INPUT.TRANSFORMS = ("random_flip", "normalize")  # training transforms (Dassl names)
    _C.INPUT.TEST_TRANSFORMS = ()  # test transforms; () = resize + center crop (+ normalize if in TRANSFORMS)
    _C.INPUT.TEST_RESIZE = "pil"  # test-time resize: pil (PIL's, as CLIP / Dassl: official numbers) | tensor
    _C.INPUT.NO_TRANSFORM = False  # skip all transforms but to-tensor
    _C.INPUT.PIXEL_MEAN = list(CLIP_MEAN)  # normalisation mean (CLIP's; Dassl's default is ImageNet's)
    _C.INPUT.PIXEL_STD = list(CLIP_STD)  # normalisation std (CLIP's)
    _C.INPUT.CROP_PADDING = 4  # padding for random_crop
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)  # scale range of random_resized_crop
    _C.INPUT.COLORJITTER_B = 0.4  # colorjitter brightness
    _C.INPUT.COLORJITTER_C = 0.4  # colorjitter contrast
    _C.INPUT.COLORJITTER_S = 0.4  # colorjitter saturation
    _C.INPUT.COLORJITTER_H = 0.1  # colorjitter hue
    _C.INPUT.RGS_P = 0.2  # probability of random grayscale
    _C.INPUT.GB_P = 0.5  # probability of gaussian blur
    _C.INPUT.GB_K = 21  # gaussian blur kernel size

    _C.DATASET = CN()
    _C.DATASET.ROOT = "data"  # root folder that holds the dataset folders
    _C.DATASET.NAME = "SyntheticEmotion"  # registered dataset name (default: the built-in synthetic data)
    _C.DATASET.SOURCE_DOMAINS = ()  # kept for Dassl compatibility
    _C.DATASET.TARGET_DOMAINS = ()  # kept for Dassl compatibility
    _C.DATASET.NUM_SHOTS = -1  # few-shot: N training samples per class (-1 = all)
    _C.DATASET.VAL_PERCENT = 0.1  # share of train used for validation when a dataset has no val split
    _C.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new (first / second half of the classes)
    _C.DATASET.TASK = ""  # "" = the dataset's own | single_label | multi_label

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 2  # data loading worker processes
    _C.DATALOADER.K_TRANSFORMS = 1  # kept for Dassl compatibility
    _C.DATALOADER.RETURN_IMG0 = False  # kept for Dassl compatibility
    _C.DATALOADER.PIN_MEMORY = True  # pin host memory when training on a GPU
    _C.DATALOADER.PREFETCH_FACTOR = 4  # batches prefetched per worker
    _C.DATALOADER.DECODED_CACHE = "auto"  # decode images once, augment on the device: auto (GPU) | memory | gpu | disk | off
    _C.DATALOADER.DECODED_CACHE_DIR = "cache/decoded"  # where DECODED_CACHE disk keeps its files
    _C.DATALOADER.DECODED_CACHE_MAX_GB = 8.0  # auto: use the GPU cache only below this size
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"  # RandomSampler | SequentialSampler
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32  # training batch size (per process)
    _C.DATALOADER.TRAIN_X.N_DOMAIN = 0  # kept for Dassl compatibility
    _C.DATALOADER.TRAIN_X.N_INS = 16  # kept for Dassl compatibility
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"  # test sampler
    _C.DATALOADER.TEST.BATCH_SIZE = 32  # test batch size (per process)

    _C.MODEL = CN()
    _C.MODEL.INIT_WEIGHTS = ""  # path to weights loaded into the trainable model at start
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = ""  # backbone name, e.g. "ViT-B/16", "RN50", "emolab-tiny-vit"
    _C.MODEL.BACKBONE.PRETRAINED = ""  # weights: "" = random init, a local file, or an open_clip tag
    _C.MODEL.HEAD = CN()
    _C.MODEL.HEAD.NAME = ""  # kept for Dassl compatibility
    _C.MODEL.HEAD.HIDDEN_LAYERS = ()  # kept for Dassl compatibility
    _C.MODEL.HEAD.ACTIVATION = "relu"  # kept for Dassl compatibility
    _C.MODEL.HEAD.BN = True  # kept for Dassl compatibility
    _C.MODEL.HEAD.DROPOUT = 0.0  # kept for Dassl compatibility

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "adam"  # sgd | adam | adamw
    _C.OPTIM.LR = 0.0003  # base learning rate
    _C.OPTIM.WEIGHT_DECAY = 5e-4  # weight decay
    _C.OPTIM.MOMENTUM = 0.9  # sgd momentum
    _C.OPTIM.SGD_DAMPNING = 0.0  # sgd dampening
    _C.OPTIM.SGD_NESTEROV = False  # sgd nesterov
    _C.OPTIM.ADAM_BETA1 = 0.9  # adam(w) beta1
    _C.OPTIM.ADAM_BETA2 = 0.999  # adam(w) beta2
    _C.OPTIM.LR_SCHEDULER = "single_step"  # cosine | single_step | multi_step | constant
    _C.OPTIM.STEPSIZE = (-1,)  # step size(s) in epochs for single/multi step (<= 0 = MAX_EPOCH, as Dassl)
    _C.OPTIM.GAMMA = 0.1  # step decay factor
    _C.OPTIM.MAX_EPOCH = 10  # number of training epochs
    _C.OPTIM.WARMUP_EPOCH = -1  # warm-up epochs (<= 0: none)
    _C.OPTIM.WARMUP_TYPE = "linear"  # constant | linear
    _C.OPTIM.WARMUP_CONS_LR = 1e-5  # lr during constant warm-up
    _C.OPTIM.WARMUP_MIN_LR = 1e-5  # lr of the first linear warm-up epoch (then base_lr * e / WARMUP_EPOCH)
    _C.OPTIM.WARMUP_RECOUNT = True  # kept for Dassl compatibility (the schedule restarts after warm-up)
    _C.OPTIM.STEP_PER_ITER = False  # step the LR schedule every iteration instead of every epoch
    _C.OPTIM.MAX_GRAD_NORM = 0.0  # clip gradients to this norm (0 = off)
    _C.OPTIM.FUSED = True  # use fused optimiser kernels on CUDA where available

    _C.TRAIN = CN()
    _C.TRAIN.CHECKPOINT_FREQ = 0  # save a checkpoint every N epochs (0 = last only)
    _C.TRAIN.PRINT_FREQ = 10  # log every N iterations
    _C.TRAIN.COUNT_ITER = "train_x"  # kept for Dassl compatibility
    _C.TRAIN.PRECISION = "bf16"  # fp32 | fp16 | bf16 | amp (autocast on CUDA; CPU always runs fp32)
    _C.TRAIN.COMPILE = False  # torch.compile the model
    _C.TRAIN.EVAL_FREQ = 1  # evaluate on val every N epochs (0 = never)
    _C.TRAIN.PROGRESS_BAR = True  # tqdm progress bar on a terminal
    _C.TRAIN.DIST_TIMEOUT = 600.0  # seconds a process waits for the others in a collective before it stops
    _C.TRAIN.REQUIRE_GPU = False  # True: stop at start-up unless a CUDA GPU is usable (also --require-gpu)
    _C.TRAIN.LOGGERS = ("tensorboard",)  # experiment trackers: tensorboard | wandb (offline) | mlflow (local files)

    _C.TEST = CN()
    _C.TEST.EVALUATOR = "Classification"  # Classification | MultiLabel (auto for multi-label data)
    _C.TEST.PER_CLASS_RESULT = False  # log per-class accuracy
    _C.TEST.COMPUTE_CMAT = False  # save the confusion matrix
    _C.TEST.NO_TEST = False  # skip the final test
    _C.TEST.SPLIT = "test"  # split for the final evaluation: val | test
    _C.TEST.FINAL_MODEL = "last_step"  # last_step | best_val: weights used for the final test
    _C.TEST.THRESHOLD = 0.5  # multi-label decision threshold for F1
    _C.TEST.TOPK = (1, 2, 3)  # k values for multi-label recall@k and hit@k

    _C.TRAINER = CN()
    _C.TRAINER.NAME = "CoOp"  # registered trainer name
    return _C
