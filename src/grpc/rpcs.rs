//! `inference.GRPCInferenceService` over the one [`InferenceService`]
//! facade the HTTP handlers use: readiness, metadata and inference run
//! the same code, so batching, priorities, deadlines, the cache, the
//! prediction log, metrics and stats behave alike on both protocols.
//! Errors are the HTTP ones, as gRPC statuses ([`super::status`]).
//!
//! [`InferenceService`]: crate::service::InferenceService

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::caller::{authorize, model_path};
use super::infer::{infer, stream, Origin};
use super::json;
use super::parameters::load_parameters;
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::*;
use super::status::GrpcStatus;
use crate::error::ApiError;
use crate::service::models::{overrides_from_parameters, TensorMetadata, EXTENSIONS};
use crate::service::InferenceService;
use crate::triton::cuda_shared_memory;

/// The gRPC service: what every RPC shares.
pub struct Inference {
    pub service: Arc<InferenceService>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.service.is_ready(),
        }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        let request = request.into_inner();
        let model = self
            .service
            .model_at(&model_path(request.name, request.version))
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(ModelReadyResponse {
            ready: model.is_servable(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "gantry".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        let request = request.into_inner();
        let metadata = self
            .service
            .model_metadata(&model_path(request.name, request.version))
            .await
            .map_err(|e| e.grpc_status())?;
        let convert = |t: TensorMetadata| model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype.to_string(),
            shape: t.shape,
        };
        Ok(Response::new(ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: metadata.platform.into(),
            inputs: metadata.inputs.into_iter().map(convert).collect(),
            outputs: metadata.outputs.into_iter().map(convert).collect(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        let origin = Origin::of(&request, "/inference.GRPCInferenceService/ModelInfer");
        let (answer, logged) = infer(self.service.clone(), origin, request.into_inner()).await?;
        let mut response = Response::new(answer);
        if let Some(value) = logged.and_then(|id| id.to_string().parse().ok()) {
            response.metadata_mut().insert("x-prediction-id", value);
        }
        Ok(response)
    }

    type ModelStreamInferStream =
        Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        let origin = Origin::of(&request, "/inference.GRPCInferenceService/ModelStreamInfer");
        Ok(Response::new(stream(
            self.service.clone(),
            origin,
            request.into_inner(),
        )))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Answer<ModelConfigResponse> {
        let request = request.into_inner();
        let path = model_path(request.name, request.version);
        let answer = async {
            let config = self.service.config_json(&path).await?;
            json::message(
                "inference.ModelConfigResponse",
                &serde_json::json!({ "config": config }),
            )
        };
        answer.await.map(Response::new).map_err(|e| e.grpc_status())
    }

    /// Every served model's statistics when the request names none.
    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let request = request.into_inner();
        let path = (!request.name.is_empty()).then(|| model_path(request.name, request.version));
        self.service
            .statistics_json(path.as_ref())
            .and_then(|stats| json::message("inference.ModelStatisticsResponse", &stats))
            .map(Response::new)
            .map_err(|e| e.grpc_status())
    }

    /// Every model, or (`ready`) the ready ones.
    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Answer<RepositoryIndexResponse> {
        let ready_only = request.into_inner().ready;
        let models = self
            .service
            .repository_index()
            .into_iter()
            .filter(|e| !ready_only || e.state == "READY")
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.to_string(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    /// Answers once the model serves, as HTTP's load does.
    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        authorize(&self.service, &request)?;
        let request = request.into_inner();
        let loaded = async {
            let overrides = overrides_from_parameters(
                &request.model_name,
                load_parameters(request.parameters),
            )?;
            self.service
                .load_model(&request.model_name, overrides)
                .await?;
            Ok::<_, ApiError>(())
        };
        loaded.await.map_err(|e| e.grpc_status())?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        authorize(&self.service, &request)?;
        let model = request.into_inner().model_name;
        self.service
            .unload_model(&model)
            .await
            .map_err(|e| ApiError::from(e).grpc_status())?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    /// The region named, or every region when the request names none.
    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> Answer<SystemSharedMemoryStatusResponse> {
        authorize(&self.service, &request)?;
        let name = request.into_inner().name;
        let regions = self
            .service
            .shared_memory()
            .status(Some(name.as_str()).filter(|n| !n.is_empty()))
            .map_err(|e| e.grpc_status())?
            .into_iter()
            .map(|r| {
                let status = system_shared_memory_status_response::RegionStatus {
                    name: r.name.clone(),
                    key: r.key,
                    offset: r.offset,
                    byte_size: r.byte_size,
                };
                (r.name, status)
            })
            .collect();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Answer<SystemSharedMemoryRegisterResponse> {
        authorize(&self.service, &request)?;
        let r = request.into_inner();
        self.service
            .shared_memory()
            .register(&r.name, &r.key, r.offset, r.byte_size)
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    /// The region named (success when there is none, as in Triton), or
    /// every region when the request names none.
    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<SystemSharedMemoryUnregisterResponse> {
        authorize(&self.service, &request)?;
        match request.into_inner().name.as_str() {
            "" => {
                self.service.shared_memory().unregister_all();
            }
            name => {
                self.service.shared_memory().unregister(name);
            }
        }
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    /// No CUDA region is registered here: none listed, a named one
    /// unknown ([`crate::triton::cuda_shared_memory`]).
    async fn cuda_shared_memory_status(
        &self,
        request: Request<CudaSharedMemoryStatusRequest>,
    ) -> Answer<CudaSharedMemoryStatusResponse> {
        authorize(&self.service, &request)?;
        let name = request.into_inner().name;
        cuda_shared_memory::status(Some(name.as_str()).filter(|n| !n.is_empty()))
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(CudaSharedMemoryStatusResponse {
            regions: Default::default(),
        }))
    }

    /// Refused (INVALID_ARGUMENT), saying to use system shared memory.
    async fn cuda_shared_memory_register(
        &self,
        request: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Answer<CudaSharedMemoryRegisterResponse> {
        authorize(&self.service, &request)?;
        Err(cuda_shared_memory::register(&request.into_inner().name).grpc_status())
    }

    /// Success: the region (or every region) is not registered.
    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<CudaSharedMemoryUnregisterResponse> {
        authorize(&self.service, &request)?;
        Ok(Response::new(CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Answer<TraceSettingResponse> {
        Err(Status::unimplemented("trace settings are not supported"))
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Answer<LogSettingsResponse> {
        Err(Status::unimplemented("log settings are not supported"))
    }
}
