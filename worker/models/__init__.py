"""Model handlers: load once, preprocess, infer, postprocess. Nothing here knows SQS or Flask."""
