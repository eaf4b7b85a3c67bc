"""tokenrelay for Python: SDK token providers backed by the packaged `tokenrelay` binary.

    from tokenrelay import azure_ad_token_provider
    client = openai.AzureOpenAI(azure_endpoint=..., api_version=...,
                                azure_ad_token_provider=azure_ad_token_provider(config="tokenrelay.toml"))

See `bearer_token_provider` for the options and README.md for the Copilot SDK.
"""

from ._provider import (
    AsyncTokenProvider,
    Token,
    TokenProvider,
    TokenRelayError,
    azure_ad_token_provider,
    bearer_token_provider,
)

__all__ = [
    "AsyncTokenProvider",
    "Token",
    "TokenProvider",
    "TokenRelayError",
    "azure_ad_token_provider",
    "bearer_token_provider",
]
