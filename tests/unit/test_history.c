/* Unit tests for replication/history.c: the fork point between two histories of
 * promotions (which epoch wrote which sequence numbers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "replication/repl_int.h"

/* add appends a record (epoch, start_seq, node) to h. */
static void
add(struct history *h, uint64_t epoch, uint64_t start, const char *node)
{
    struct hist_rec *r = &h->rec[h->n++];
    r->epoch = epoch;
    r->start_seq = start;
    str_copy(r->node, sizeof r->node, node);
}

static void
test_same_history_agrees_up_to_the_limit(void **state)
{
    (void)state;
    struct history a, b;
    hist_init(&a);
    hist_init(&b);
    assert_int_equal(hist_fork(&a, &b, 40), 40); /* both only epoch 1 */
    add(&a, 2, 11, "us");
    add(&b, 2, 11, "us");
    assert_int_equal(hist_fork(&a, &b, 40), 40);
    assert_int_equal(hist_epoch_at(&a, 10), 1);
    assert_int_equal(hist_epoch_at(&a, 11), 2);
    hist_release(&a);
    hist_release(&b);
}

static void
test_a_replica_ahead_on_the_old_branch_forks_at_the_promotion(void **state)
{
    (void)state;
    /* eu (epoch 1) wrote up to 34; us was promoted at epoch 2 after applying 4 */
    struct history primary, replica;
    hist_init(&primary);
    hist_init(&replica);
    add(&primary, 2, 5, "us");
    assert_int_equal(hist_fork(&primary, &replica, 34), 4);
    /* a replica that had applied only up to 4 is not past the fork */
    assert_int_equal(hist_fork(&primary, &replica, 4), 4);
    hist_release(&primary);
    hist_release(&replica);
}

static void
test_another_branch_in_between_forks_at_its_start(void **state)
{
    (void)state;
    /* the replica followed us (epoch 2 from 91); the new primary is ap, promoted
     * at epoch 3 from 96 without ever having seen epoch 2 */
    struct history primary, replica;
    hist_init(&primary);
    hist_init(&replica);
    add(&replica, 2, 91, "us");
    add(&primary, 3, 96, "ap");
    assert_int_equal(hist_fork(&primary, &replica, 100), 90);
    assert_int_equal(hist_fork(&primary, &replica, 90), 90);
    hist_release(&primary);
    hist_release(&replica);
}

static void
test_two_promotions_to_one_epoch_are_different_branches(void **state)
{
    (void)state;
    struct history a, b;
    hist_init(&a);
    hist_init(&b);
    add(&a, 2, 11, "us");
    add(&b, 2, 11, "ap"); /* two operators at once: same epoch, other writer */
    assert_int_equal(hist_fork(&a, &b, 50), 10);
    hist_release(&a);
    hist_release(&b);
    hist_init(&a);
    hist_init(&b);
    add(&a, 2, 11, "us");
    add(&b, 2, 12, "us"); /* same writer, another start: not the same record */
    assert_int_equal(hist_fork(&a, &b, 50), 10);
    hist_release(&a);
    hist_release(&b);
}

static void
test_a_common_later_promotion_after_a_short_branch(void **state)
{
    (void)state;
    /* both went 1 -> 2(us@11) -> 4(eu@30), but the replica also knew a record 3
     * (ap@20) that wrote 20..29 into its log */
    struct history primary, replica;
    hist_init(&primary);
    hist_init(&replica);
    add(&primary, 2, 11, "us");
    add(&primary, 4, 30, "eu");
    add(&replica, 2, 11, "us");
    add(&replica, 3, 20, "ap");
    add(&replica, 4, 30, "eu");
    assert_int_equal(hist_fork(&primary, &replica, 60), 19);
    hist_release(&primary);
    hist_release(&replica);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_history_agrees_up_to_the_limit),
        cmocka_unit_test(test_a_replica_ahead_on_the_old_branch_forks_at_the_promotion),
        cmocka_unit_test(test_another_branch_in_between_forks_at_its_start),
        cmocka_unit_test(test_two_promotions_to_one_epoch_are_different_branches),
        cmocka_unit_test(test_a_common_later_promotion_after_a_short_branch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
