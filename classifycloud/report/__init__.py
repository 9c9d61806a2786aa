"""The metrics review: read CloudWatch and the S3 result records, summarize, plot, render HTML."""
