"""Run by the KServe venv's python (make test builds .venv-kserve: kserve pins protobuf<7, which our own venv
does not take): KServe's InferenceRESTClient sends one image to /v2/models/<model>/infer; prints the outputs."""
import asyncio
import base64
import json
import sys

from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(base_url: str, model: str, photo: str, headers: dict) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=180, retries=0))
    with open(photo, "rb") as fh:
        data = base64.b64encode(fh.read()).decode()
    request = InferRequest(model_name=model, infer_inputs=[InferInput("image", [1], "BYTES", [data])])
    response = await client.infer(base_url, request, model_name=model, headers=headers)
    print(json.dumps({out.name: out.data for out in response.outputs}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
