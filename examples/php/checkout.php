<?php
// Checkout on a Stripe Connect platform: get (or create) the buyer's customer on the
// organizer's account through stripe-projector, then use it on that same account.
//
//   php examples/php/checkout.php ACCOUNT EMAIL [NAME]
//
// Settings, from the environment:
//   PROJECTOR_URL      where stripe-projector serves (default http://127.0.0.1:8080)
//   ENSURE_API_TOKEN   its ensure token, when it has one
//   STRIPE_SECRET_KEY  the platform's key (sk_test_... or sk_live_...)
//   STRIPE_API_BASE    Stripe's API (default https://api.stripe.com)
//
// Prints {"customer_id":..., "created":..., "payment_intent":...} and exits 0; on an error,
// one line on stderr and exit 1. Plain PHP 8 (json, openssl): no Composer package needed.

declare(strict_types=1);

/** POSTs and decodes a JSON answer; [status, body]. */
function post(string $url, array $headers, string $body): array
{
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => implode("\r\n", $headers),
        'content' => $body,
        'ignore_errors' => true, // read the body of 4xx/5xx answers too
        'timeout' => 30,
    ]]);
    $answer = @file_get_contents($url, false, $context);
    if ($answer === false) {
        throw new RuntimeException("no answer from $url");
    }
    // The status of the last response (a redirect adds a status line of its own).
    $status = 0;
    foreach ($http_response_header as $line) {
        if (preg_match('{^HTTP/\S+ (\d{3})}', $line, $match)) {
            $status = (int) $match[1];
        }
    }
    return [$status, json_decode($answer, true)];
}

/**
 * The customer of EMAIL on ACCOUNT: the one the read model has, or one created on the
 * organizer's account exactly once. Retry a 503: it is transient by contract.
 */
function ensure_customer(string $projector, ?string $token, string $account, string $email, ?string $name): array
{
    $headers = ['Content-Type: application/json'];
    if ($token !== null && $token !== '') {
        $headers[] = "Authorization: Bearer $token";
    }
    $body = json_encode(array_filter(
        ['account' => $account, 'email' => $email, 'name' => $name],
        fn ($value) => $value !== null
    ));
    for ($attempt = 1; ; $attempt++) {
        [$status, $answer] = post("$projector/v1/customers/ensure", $headers, $body);
        if ($status === 200 || $status === 201) {
            return $answer;
        }
        if ($status === 503 && $attempt < 3) {
            usleep(200000 * $attempt);
            continue;
        }
        $code = $answer['error'] ?? 'unknown';
        throw new RuntimeException("ensure answered $status $code");
    }
}

/** A PaymentIntent for CUSTOMER on ACCOUNT: the customer must live on that account. */
function create_payment_intent(string $stripe, string $key, string $account, string $customer): array
{
    $headers = [
        "Authorization: Bearer $key",
        "Stripe-Account: $account",
        'Content-Type: application/x-www-form-urlencoded',
    ];
    $form = http_build_query(['amount' => 2500, 'currency' => 'eur', 'customer' => $customer]);
    [$status, $answer] = post("$stripe/v1/payment_intents", $headers, $form);
    if ($status !== 200) {
        $type = $answer['error']['type'] ?? 'unknown';
        throw new RuntimeException("Stripe answered $status $type");
    }
    return $answer;
}

try {
    [$account, $email] = [$argv[1] ?? '', $argv[2] ?? ''];
    if ($account === '' || $email === '') {
        throw new InvalidArgumentException('usage: checkout.php ACCOUNT EMAIL [NAME]');
    }
    $customer = ensure_customer(
        getenv('PROJECTOR_URL') ?: 'http://127.0.0.1:8080',
        getenv('ENSURE_API_TOKEN') ?: null,
        $account,
        $email,
        $argv[3] ?? null
    );
    $intent = create_payment_intent(
        getenv('STRIPE_API_BASE') ?: 'https://api.stripe.com',
        getenv('STRIPE_SECRET_KEY') ?: throw new InvalidArgumentException('STRIPE_SECRET_KEY is not set'),
        $account,
        $customer['customer_id']
    );
    echo json_encode([
        'customer_id' => $customer['customer_id'],
        'created' => $customer['created'],
        'payment_intent' => $intent['id'],
    ]), "\n";
} catch (Throwable $error) {
    fwrite(STDERR, 'error: ' . $error->getMessage() . "\n");
    exit(1);
}
