//! The WebSocket path of a device connection before authentication: the HTTP upgrade request
//! (subprotocol check, limits), then frames decoded into envelopes. The fuzzer's bytes are the
//! client's whole side of the connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let input = data.to_vec();
        let writer = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            // Drain what the server answers so that it never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        };
        let server = carebell_gateway::device::fuzz_websocket(server, 64 * 1024);
        let (_, (envelopes, refused)) = tokio::join!(writer, server);
        // Every frame is either an envelope or a refusal; there are never more of them than
        // bytes sent.
        assert!(envelopes + refused <= data.len());
    });
});
