//! The codec of the generated `fog.agent.v1` service: tonic-prost's protobuf codec, except that
//! a message that does not decode (malformed protobuf, invalid UTF-8 in a `string` field, a
//! wrong wire type) is `INVALID_ARGUMENT` instead of tonic-prost's `INTERNAL`.
//!
//! Why a codec and not a layer that rewrites statuses: the decode error is known as such only
//! here, by its type ([`prost::DecodeError`]); after the codec it is one more `INTERNAL`, which
//! a layer could tell from a handler's own internal error only by its text. The build
//! (`build.rs`, `codec_path`) makes the generated server and client use this codec; on the
//! client side it means a response the client cannot decode is reported `INVALID_ARGUMENT`
//! too, by the client itself (the agent never sends one).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// tonic-prost's codec with decode errors as `INVALID_ARGUMENT` (see the module doc).
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder {
            _message: PhantomData,
        }
    }
}

/// Decodes `U`; a message that does not decode is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct ProtoDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|err| Status::invalid_argument(format!("the message does not decode: {err}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
