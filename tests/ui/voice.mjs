// Voice: the console and the tablet emulator, in two browser contexts with fake media devices,
// connect audio; the peer connection is "connected" and inbound audio packets are counted on
// both sides.
import { config, person, shot, byTestId, signIn, check, scenario } from './lib.mjs';

async function inboundAudioPackets(page) {
  return page.evaluate(async () => {
    const pc = window.carebellVoice?.pc;
    if (!pc) return 0;
    let packets = 0;
    (await pc.getStats()).forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'audio') packets += report.packetsReceived ?? 0;
    });
    return packets;
  });
}

async function waitForPackets(page, who) {
  const deadline = Date.now() + 20000;
  let packets = 0;
  while (Date.now() < deadline) {
    packets = await inboundAudioPackets(page);
    if (packets > 0) return packets;
    await page.waitForTimeout(250);
  }
  throw new Error(`${who} received no audio packets`);
}

await scenario('voice', async (browser) => {
  const { page: tablet } = await person(browser, 'tablet');
  await tablet.goto(`${config.web_url}/tablet`);
  await byTestId(tablet, 'credentials').fill(config.credentials_json);
  await byTestId(tablet, 'connect').click();
  await byTestId(tablet, 'tablet-state').filter({ hasText: /^\s*connected\s*$/ }).waitFor();
  await shot(tablet, '21-tablet-connected');

  const { page: console_ } = await person(browser, 'console');
  await signIn(console_, `${config.web_url}/console`, config.operator, config.password);
  await byTestId(console_, 'me').waitFor();

  await byTestId(tablet, 'press').click();
  await byTestId(console_, 'accept').click();
  await byTestId(console_, 'call').waitFor();
  await byTestId(tablet, 'call-state').filter({ hasText: /answered|已接通|接听/ }).waitFor();

  await byTestId(console_, 'voice-start').click();
  await byTestId(console_, 'voice-state').filter({ hasText: /^\s*connected\s*$/ }).waitFor();
  await byTestId(tablet, 'voice-state').filter({ hasText: /^\s*connected\s*$/ }).waitFor();
  check(
    (await console_.evaluate(() => window.carebellVoice?.pc?.connectionState)) === 'connected',
    'the console\'s peer connection is connected',
  );
  check(
    (await tablet.evaluate(() => window.carebellVoice?.pc?.connectionState)) === 'connected',
    'the tablet\'s peer connection is connected',
  );
  const heard_by_console = await waitForPackets(console_, 'the console');
  const heard_by_tablet = await waitForPackets(tablet, 'the tablet');
  console.log(`voice: inbound audio packets: console ${heard_by_console}, tablet ${heard_by_tablet}`);
  check(heard_by_console > 0 && heard_by_tablet > 0, 'audio flows both ways');
  await shot(console_, '22-console-voice');
  await shot(tablet, '23-tablet-voice');

  await byTestId(console_, 'disposition-companionship').click();
  await byTestId(console_, 'call-ended').waitFor();
});
