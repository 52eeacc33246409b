//! The ADS gRPC service with small per-stream codec buffers.
//!
//! tonic's generated `AggregatedDiscoveryServiceServer` gives every stream an 8 KiB encode buffer and
//! an 8 KiB decode buffer (tonic's defaults); an idle proxy then costs that much on top of its HTTP/2
//! connection. This service routes the same two methods to the same [`AdsServer`] with
//! [`STREAM_BUFFER`]-byte buffers, which grow only for a large message (a proxy's requests and
//! weir's responses are mostly well under a kilobyte). Everything else — compression off, message
//! size limits — is tonic's default, as with the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codec::{BufferSettings, Codec, ProstCodec};
use tonic::codegen::{empty_body, http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::service::discovery::v3 as xdisc;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, SERVICE_NAME,
};

use super::server::AdsServer;

/// Initial size of a stream's encode and decode buffers (tonic's default: 8 KiB each).
pub const STREAM_BUFFER: usize = 1024;
/// Encoded bytes gathered before they are handed to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// prost encoding with [`STREAM_BUFFER`]-byte buffers.
struct SmallCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> SmallCodec<T, U> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD))
    }
}

/// The ADS service (state of the world and delta) over [`AdsServer`].
#[derive(Clone)]
pub struct AdsService {
    inner: Arc<AdsServer>,
}

impl AdsService {
    pub fn new(server: AdsServer) -> Self {
        Self { inner: Arc::new(server) }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

struct Sotw(Arc<AdsServer>);

impl StreamingService<xdisc::DiscoveryRequest> for Sotw {
    type Response = xdisc::DiscoveryResponse;
    type ResponseStream = <AdsServer as AggregatedDiscoveryService>::StreamAggregatedResourcesStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<xdisc::DiscoveryRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.stream_aggregated_resources(request).await })
    }
}

struct Delta(Arc<AdsServer>);

impl StreamingService<xdisc::DeltaDiscoveryRequest> for Delta {
    type Response = xdisc::DeltaDiscoveryResponse;
    type ResponseStream = <AdsServer as AggregatedDiscoveryService>::DeltaAggregatedResourcesStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<xdisc::DeltaDiscoveryRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.delta_aggregated_resources(request).await })
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move { Ok(Grpc::new(SmallCodec::new()).streaming(Sotw(inner), req).await) }),
            DELTA_PATH => Box::pin(async move { Ok(Grpc::new(SmallCodec::new()).streaming(Delta(inner), req).await) }),
            _ => Box::pin(async move {
                // As tonic's generated servers answer an unknown method.
                let mut response = http::Response::new(empty_body());
                let headers = response.headers_mut();
                headers.insert(Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            }),
        }
    }
}
