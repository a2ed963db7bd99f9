//! Triton's JSON answers as gRPC messages. The model configuration and the
//! statistics HTTP answers are protobuf's JSON mapping of the messages in
//! `proto/triton/`, so gRPC reads that same JSON through the protocol's own
//! descriptors (prost-reflect, protobuf's JSON rules: int64 as strings or
//! numbers, enums by name) and re-encodes it as the generated type: one
//! source of truth for both protocols, nothing copied field by field.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};

use crate::error::ApiError;

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/triton_descriptors.bin")).as_ref(),
    )
    .expect("build.rs wrote the protocol's descriptors")
});

/// `json` as the message `full_name` (e.g. `inference.ModelConfigResponse`).
pub fn message<M: prost::Message + Default>(
    full_name: &str,
    json: &serde_json::Value,
) -> Result<M, ApiError> {
    let descriptor = DESCRIPTORS
        .get_message_by_name(full_name)
        .ok_or_else(|| ApiError::Internal(format!("no message {full_name} in the protocol")))?;
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(descriptor, json, &options)
        .map_err(|e| ApiError::Internal(format!("{full_name} from its JSON form: {e}")))?;
    M::decode(prost::Message::encode_to_vec(&dynamic).as_slice())
        .map_err(|e| ApiError::Internal(format!("{full_name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::proto::{ModelConfigResponse, ModelStatisticsResponse};
    use super::*;

    #[test]
    fn triton_json_becomes_the_generated_messages() {
        let config: ModelConfigResponse = message(
            "inference.ModelConfigResponse",
            &serde_json::json!({"config": {
                "name": "m", "platform": "onnxruntime_onnx", "max_batch_size": 8,
                "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", 4]}],
                "dynamic_batching": {"max_queue_delay_microseconds": "100000"},
                "a_key_this_protocol_lacks": true,
            }}),
        )
        .unwrap();
        let config = config.config.unwrap();
        assert_eq!((config.name.as_str(), config.max_batch_size), ("m", 8));
        assert_eq!(config.input[0].dims, vec![-1, 4]);
        assert_eq!(config.input[0].data_type, 11); // TYPE_FP32
        let stats: ModelStatisticsResponse = message(
            "inference.ModelStatisticsResponse",
            &serde_json::json!({"model_stats": [{"name": "m", "version": "1",
                "inference_count": "3", "inference_stats": {"success": {"count": 3, "ns": "1500"}}}]}),
        )
        .unwrap();
        let m = &stats.model_stats[0];
        assert_eq!(m.inference_count, 3);
        assert_eq!(
            m.inference_stats
                .as_ref()
                .unwrap()
                .success
                .as_ref()
                .unwrap()
                .ns,
            1500
        );
        assert!(message::<ModelConfigResponse>("inference.Nope", &serde_json::json!({})).is_err());
    }
}
