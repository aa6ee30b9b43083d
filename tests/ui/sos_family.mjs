// An SOS rings on the console with its countdown; nobody accepts; the escalation shows; the
// family page receives the alert and acknowledges it; the console shows who acknowledged.
import { config, person, shot, byTestId, signIn, tabletSim, check, scenario } from './lib.mjs';

await scenario('sos_family', async (browser) => {
  const { page: console_ } = await person(browser, 'console');
  await signIn(console_, `${config.web_url}/console`, config.operator, config.password);
  await byTestId(console_, 'me').waitFor();

  const { page: family } = await person(browser, 'family');
  await signIn(family, `${config.web_url}/family`, config.family_user, config.password);
  await byTestId(family, 'relatives').filter({ hasText: config.resident_name }).waitFor();
  await shot(family, '11-family-signed-in');

  const tablet = tabletSim(['long-press', 'sleep:60s']);
  try {
    await byTestId(console_, 'alarm').waitFor();
    await byTestId(console_, 'countdown').waitFor();
    const countdown = Number((await byTestId(console_, 'countdown').innerText()).replace(/[^0-9]/g, ''));
    check(Number.isFinite(countdown), 'the alarm shows a countdown in seconds');
    await shot(console_, '12-console-sos-ringing');

    // Nobody accepts: the escalation shows.
    await byTestId(console_, 'escalated').waitFor({ timeout: 30000 });
    await shot(console_, '13-console-escalated');

    // The family cascade reaches the family page; they acknowledge.
    const alert = byTestId(family, 'alert').first();
    await alert.waitFor({ timeout: 30000 });
    await shot(family, '14-family-alert');
    await alert.locator('[data-testid="acknowledge"]').click();
    await alert.filter({ hasText: /已确认|acknowledged/i }).waitFor();
    await shot(family, '15-family-acknowledged');

    await byTestId(console_, 'cascade-acknowledged').filter({ hasText: config.contact_name }).waitFor();
    await shot(console_, '16-console-who-acknowledged');
  } finally {
    tablet.child.kill();
  }
});
