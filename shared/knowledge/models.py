"""Knowledge contract models shared by the indexer (knowledge API, retrieval) and the runtime (RAG):
the retrieval_model of reference §4.5 and an app's dataset_configs of reference §5."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SearchMethod = Literal["semantic_search", "full_text_search", "hybrid_search", "keyword_search"]
LOCAL_EMBEDDING_PROVIDER = "plexus"  # the built-in model, needs no provider credentials
LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_TOP_K = 100


class RerankingModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reranking_provider_name: str = ""
    reranking_model_name: str = ""


class VectorSetting(BaseModel):
    model_config = ConfigDict(extra="ignore")
    vector_weight: float = Field(0.7, ge=0, le=1)
    embedding_provider_name: str = ""
    embedding_model_name: str = ""


class KeywordSetting(BaseModel):
    model_config = ConfigDict(extra="ignore")
    keyword_weight: float = Field(0.3, ge=0, le=1)


class Weights(BaseModel):
    model_config = ConfigDict(extra="ignore")
    weight_type: Literal["semantic_first", "keyword_first", "customized"] | None = "customized"
    vector_setting: VectorSetting = Field(default_factory=VectorSetting)
    keyword_setting: KeywordSetting = Field(default_factory=KeywordSetting)


class MetadataFilterCondition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=255)
    comparison_operator: str
    value: Any = None


class MetadataFiltering(BaseModel):
    model_config = ConfigDict(extra="ignore")
    logical_operator: Literal["and", "or"] = "and"
    conditions: list[MetadataFilterCondition] = Field(default_factory=list, max_length=50)


class RetrievalModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    search_method: SearchMethod = "semantic_search"
    reranking_enable: bool = False
    reranking_model: RerankingModel | None = None
    reranking_mode: Literal["reranking_model", "weighted_score"] | None = None
    top_k: int = Field(4, ge=1, le=MAX_TOP_K)
    score_threshold_enabled: bool = False
    score_threshold: float | None = Field(None, ge=0, le=1)
    weights: Weights | None = None
    metadata_filtering_conditions: MetadataFiltering | None = None

    @model_validator(mode="after")
    def _rerank(self) -> RetrievalModel:
        if self.reranking_enable and self.reranking_mode != "weighted_score":
            m = self.reranking_model
            if m is None or not m.reranking_provider_name or not m.reranking_model_name:
                raise ValueError("reranking_model with reranking_provider_name and reranking_model_name "
                                 "is required when reranking is enabled")
        return self

    def wire(self) -> dict[str, Any]:
        """The retrieval_model_dict of a dataset detail (reference §4.1)."""
        d = self.model_dump(mode="json", exclude={"metadata_filtering_conditions"})
        d["reranking_model"] = d["reranking_model"] or {"reranking_provider_name": "", "reranking_model_name": ""}
        return d


def default_retrieval_model(indexing_technique: str | None) -> RetrievalModel:
    return RetrievalModel(search_method="keyword_search" if indexing_technique == "economy" else "semantic_search")


class DatasetConfigs(BaseModel):
    """An app's dataset_configs (reference §5): which datasets to search and how."""

    model_config = ConfigDict(extra="ignore")
    retrieval_model: Literal["multiple", "single"] = "multiple"
    datasets: dict[str, Any] = Field(default_factory=dict)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K)
    score_threshold: float | None = Field(None, ge=0, le=1)
    score_threshold_enabled: bool = False
    reranking_enable: bool = False
    reranking_mode: Literal["reranking_model", "weighted_score"] | None = None
    reranking_model: RerankingModel | None = None
    weights: Weights | None = None
    search_method: SearchMethod | None = None
    metadata_filtering_conditions: MetadataFiltering | None = None

    def dataset_ids(self) -> list[str]:
        """Enabled dataset ids, in order, without duplicates."""
        out: list[str] = []
        for item in self.datasets.get("datasets") or []:
            d = item.get("dataset") if isinstance(item, dict) else None
            if isinstance(d, dict) and d.get("enabled", True) and isinstance(d.get("id"), str) and d["id"] not in out:
                out.append(d["id"])
        return out

    def retrieval_override(self) -> dict[str, Any]:
        """The parts of a retrieval_model this config sets (the dataset's own default fills the rest)."""
        out: dict[str, Any] = {}
        if self.top_k is not None:
            out["top_k"] = self.top_k
        if self.score_threshold_enabled:
            out["score_threshold_enabled"] = True
            out["score_threshold"] = self.score_threshold
        if self.reranking_enable:
            out["reranking_enable"] = True
            out["reranking_mode"] = self.reranking_mode
            if self.reranking_model is not None:
                out["reranking_model"] = self.reranking_model.model_dump()
        if self.weights is not None:
            out["weights"] = self.weights.model_dump()
        if self.search_method is not None:
            out["search_method"] = self.search_method
        if self.metadata_filtering_conditions is not None:
            out["metadata_filtering_conditions"] = self.metadata_filtering_conditions.model_dump()
        return out


def segment_text(segment: dict[str, Any]) -> str:
    """A retrieval record's segment as text for a prompt: a Q&A segment (one with an answer) is its question
    and its answer, as Dify puts it; any other segment its content."""
    content, answer = segment.get("content") or "", segment.get("answer")
    return f"question:{content} \nanswer:{answer}" if answer else content
