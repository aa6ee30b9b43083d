// An operator signs in; a simulated tablet presses; the card pops with the resident's Chinese
// name; a double click on accept answers once; a service order created from the call reaches
// the provider portal, which accepts it; the disposition ends the call.
import { config, person, shot, byTestId, signIn, tabletSim, check, scenario } from './lib.mjs';

await scenario('console_call_order', async (browser) => {
  const { page: console_ } = await person(browser, 'console');
  await signIn(console_, `${config.web_url}/console`, config.operator, config.password);
  await byTestId(console_, 'me').waitFor();
  await shot(console_, '01-console-signed-in');

  const tablet = tabletSim(['press', 'wait:ended']);
  await byTestId(console_, 'offer').first().waitFor();
  await byTestId(console_, 'card-name').filter({ hasText: config.resident_name }).waitFor();
  // The name comes with the offer; the record (with the risks) is read next, while the card
  // says it is loading.
  await byTestId(console_, 'card-risks')
    .filter({ hasText: config.risk_warning })
    .waitFor()
    .catch(() => {});
  const risks = await byTestId(console_, 'card-risks').innerText();
  check(risks.includes(config.risk_warning), `the card shows the risk warning (got "${risks}")`);
  await shot(console_, '02-console-card-pops');

  // A double click answers once and breaks nothing.
  await byTestId(console_, 'accept').dblclick();
  await byTestId(console_, 'call').waitFor();
  await shot(console_, '03-console-call');

  // A service order from the call, with ranked suggestions.
  await byTestId(console_, 'order-service').selectOption(config.service_code);
  await byTestId(console_, 'suggest').click();
  await byTestId(console_, 'suggestions').filter({ hasText: config.provider_name }).waitFor();
  await byTestId(console_, 'create-order').click();
  await byTestId(console_, 'order-created').waitFor();
  await shot(console_, '04-console-order-created');

  const { page: provider } = await person(browser, 'provider');
  await signIn(provider, `${config.web_url}/provider`, config.provider_user, config.password);
  const order = byTestId(provider, 'order').first();
  await order.waitFor();
  await shot(provider, '05-provider-offer');
  await order.locator('[data-testid="accept-order"]').click();
  await byTestId(provider, 'status-en_route').first().waitFor();
  await shot(provider, '06-provider-accepted');

  await byTestId(console_, 'disposition-service_request').click();
  await byTestId(console_, 'call-ended').waitFor();
  await shot(console_, '07-console-call-ended');
  const { code, output } = await tablet.done;
  check(code === 0, `the tablet saw its call end (tablet-sim exited ${code}):\n${output}`);
});
