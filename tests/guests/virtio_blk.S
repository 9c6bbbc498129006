/* virtio guest: a polling driver for the modern virtio-pci transport, in 32-bit flat mode
 * without paging (the helper assigns BARs below 4 GiB, and a BAR above is reported).
 *
 * It scans PCI bus 0 through 0xcf8/0xcfc for the first virtio-blk (1af4:1042) and
 * virtio-rng (1af4:1044), finds their common, notify and device configuration regions
 * through the vendor capabilities, and brings each up with queue 0 of QSIZE entries. On
 * the disk it reads sector 0 (prints its first 16 bytes), writes a pattern to sector 1,
 * reads it back and compares, and flushes, printing each request's status byte; from the
 * rng it asks for 64 bytes. Then "virtio done" and ACPI power-off. Any failure prints
 * "virtio failed: why" and powers off too.
 *
 * Requests go one at a time through descriptors 0.., each chain is put in the avail ring,
 * the queue is kicked through its notify address, and the used ring's index is polled
 * (bounded by the TSC); no interrupts. */
#include "pvh_note.S"

#define QSIZE		8
/* struct dev */
#define SLOT		0	/* PCI device number, 0 while not found */
#define COMMON		4	/* common configuration */
#define NOTIFY		8	/* notify region, then queue 0's notify address */
#define DEVCFG		12	/* device configuration */
#define MULT		16	/* notify_off_multiplier */
#define RING		20	/* desc table; avail ring at +0x100, used ring at +0x200 */
/* struct virtio_pci_common_cfg */
#define DEV_FEAT_SEL	0x00
#define DEV_FEAT	0x04
#define DRV_FEAT_SEL	0x08
#define DRV_FEAT	0x0c
#define STATUS		0x14
#define Q_SELECT	0x16
#define Q_SIZE		0x18
#define Q_ENABLE	0x1c
#define Q_NOTIFY_OFF	0x1e
#define Q_DESC		0x20
#define Q_DRIVER	0x28
#define Q_DEVICE	0x30
/* virtq_desc flags */
#define F_NEXT		1
#define F_WRITE		2
/* virtio-blk request types */
#define T_IN		0
#define T_OUT		1
#define T_FLUSH		4

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	cld
	xor %ebx, %ebx			/* device number */
1:	xor %ecx, %ecx
	call pci_read
	mov $blk, %edi
	cmp $0x10421af4, %eax
	je 2f
	mov $rng, %edi
	cmp $0x10441af4, %eax
	jne 3f
2:	cmpl $0, SLOT(%edi)
	jne 3f
	mov %ebx, SLOT(%edi)
3:	inc %ebx
	cmp $32, %ebx
	jb 1b

	/* virtio-blk */
	mov $blk, %edi
	mov $s_no_blk, %esi
	call virtio_setup
	mov $s_blk, %esi
	call put_slot
	mov $s_capacity, %esi
	call puts
	mov DEVCFG(%edi), %eax
	mov (%eax), %eax		/* capacity, low 32 bits */
	call putdec
	mov $s_sectors, %esi
	call puts

	mov $T_IN, %eax			/* read sector 0 */
	xor %edx, %edx
	mov $F_WRITE, %ebx
	mov $buf, %esi
	call blk_req
	mov $s_read, %esi
	call put_status
	mov $s_sector0, %esi
	call puts
	mov $buf, %esi
	mov $16, %ecx
4:	mov $' ', %al
	call putc
	lodsb
	call puthex8
	loop 4b
	mov $'\n', %al
	call putc

	mov $buf, %edi			/* write sector 1: byte i is i ^ 0x3c */
	xor %ecx, %ecx
5:	mov %cl, %al
	xor $0x3c, %al
	mov %al, (%edi,%ecx)
	inc %ecx
	cmp $512, %ecx
	jb 5b
	mov $T_OUT, %eax
	mov $1, %edx
	xor %ebx, %ebx
	mov $buf, %esi
	call blk_req
	mov $s_write, %esi
	call put_status

	mov $T_IN, %eax			/* read it back */
	mov $1, %edx
	mov $F_WRITE, %ebx
	mov $buf2, %esi
	call blk_req
	mov $s_readback, %esi
	call put_status
	mov $buf, %esi
	mov $buf2, %edi
	mov $512, %ecx
	repe cmpsb
	mov $s_same, %esi
	je 6f
	mov $s_differs, %esi
6:	call puts

	mov $T_FLUSH, %eax
	xor %edx, %edx
	call blk_req
	mov $s_flush, %esi
	call put_status

	/* virtio-rng: one 64-byte device-writable buffer */
	mov $rng, %edi
	mov $s_no_rng, %esi
	call virtio_setup
	mov $s_rng, %esi
	call put_slot
	mov $'\n', %al
	call putc
	mov RING(%edi), %esi
	movl $rng_buf, (%esi)
	movl $0, 4(%esi)
	movl $64, 8(%esi)
	movw $F_WRITE, 12(%esi)
	movw $0, 14(%esi)
	call virtq_submit
	mov $s_rng_got, %esi
	call puts
	call putdec
	mov $s_bytes_nl, %esi
	call puts
	mov $rng_buf, %edi
	mov $16, %ecx
	xor %eax, %eax
	repe scasl
	mov $s_all_zero, %esi
	je 7f
	mov $s_not_zero, %esi
7:	call puts

	mov $s_done, %esi
	call puts
	jmp acpi_poweroff

/* fail: "virtio failed: " + the string at %esi, then power off. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
	mov $'\n', %al
	call putc
	jmp acpi_poweroff

/* pci_read: configuration register at byte offset %ecx of device %ebx on bus 0, into %eax.
 * Leaves %dx at 0xcfc, so a write to the same register can follow. */
pci_read:
	mov %ebx, %eax
	shl $11, %eax
	or %ecx, %eax
	and $0xfffffffc, %eax
	or $0x80000000, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	ret

/* bar_addr: the address of BAR %eax of device %ebx, into %eax; fails for a BAR above 4 GiB
 * or one that is not memory. Clobbers %ecx, %edx. */
bar_addr:
	lea 0x10(,%eax,4), %ecx
	call pci_read
	test $1, %al			/* I/O space */
	jnz 2f
	test $4, %al			/* 64-bit: the high half must be 0 */
	jz 1f
	push %eax
	add $4, %ecx
	call pci_read
	test %eax, %eax
	pop %eax
	jnz 2f
1:	and $0xfffffff0, %eax
	ret
2:	mov $s_bad_bar, %esi
	jmp fail

/* virtio_setup: %edi = struct dev, %esi = what to say when SLOT is 0. Finds the regions,
 * negotiates VERSION_1 only, sets up queue 0 and sets DRIVER_OK. */
virtio_setup:
	mov SLOT(%edi), %ebx
	test %ebx, %ebx
	jz fail
	mov $4, %ecx			/* memory decoding and bus mastering on */
	call pci_read
	or $6, %ax
	out %ax, %dx
	mov $0x34, %ecx
	call pci_read
	movzbl %al, %ecx
1:	test %ecx, %ecx
	jz 5f
	call pci_read
	mov %eax, %esi			/* vndr, next, len, cfg_type */
	cmp $0x09, %al
	jne 4f
	push %ecx
	add $4, %ecx
	call pci_read
	movzbl %al, %eax		/* bar */
	call bar_addr
	mov %eax, %ebp
	mov (%esp), %ecx
	add $8, %ecx
	call pci_read
	add %eax, %ebp			/* + offset */
	pop %ecx
	mov %esi, %eax
	shr $24, %eax
	cmp $1, %al
	jne 2f
	cmpl $0, COMMON(%edi)
	jne 4f
	mov %ebp, COMMON(%edi)
	jmp 4f
2:	cmp $4, %al
	jne 3f
	cmpl $0, DEVCFG(%edi)
	jne 4f
	mov %ebp, DEVCFG(%edi)
	jmp 4f
3:	cmp $2, %al
	jne 4f
	cmpl $0, NOTIFY(%edi)
	jne 4f
	mov %ebp, NOTIFY(%edi)
	push %ecx
	add $16, %ecx
	call pci_read
	mov %eax, MULT(%edi)
	pop %ecx
4:	mov %esi, %ecx			/* next */
	movzbl %ch, %ecx
	jmp 1b
5:	mov $s_no_cap, %esi
	cmpl $0, COMMON(%edi)
	je fail
	cmpl $0, NOTIFY(%edi)
	je fail
	cmpl $0, DEVCFG(%edi)
	je fail

	mov COMMON(%edi), %ebp
	movb $0, STATUS(%ebp)		/* reset, and wait for it */
	mov $s_no_reset, %esi
	mov STATUS(%ebp), %al
	test %al, %al
	jnz fail
	movb $1, STATUS(%ebp)		/* ACKNOWLEDGE */
	movb $3, STATUS(%ebp)		/* | DRIVER */
	movl $1, DEV_FEAT_SEL(%ebp)
	mov DEV_FEAT(%ebp), %eax
	mov $s_no_v1, %esi
	test $1, %al			/* VIRTIO_F_VERSION_1, bit 32 */
	jz fail
	movl $0, DRV_FEAT_SEL(%ebp)
	movl $0, DRV_FEAT(%ebp)
	movl $1, DRV_FEAT_SEL(%ebp)
	movl $1, DRV_FEAT(%ebp)
	movb $0xb, STATUS(%ebp)		/* | FEATURES_OK */
	mov STATUS(%ebp), %al
	mov $s_features, %esi
	cmp $0xb, %al
	jne fail
	movw $0, Q_SELECT(%ebp)
	movzwl Q_SIZE(%ebp), %eax
	mov $s_qsize, %esi
	cmp $QSIZE, %eax
	jb fail
	movw $QSIZE, Q_SIZE(%ebp)
	movzwl Q_NOTIFY_OFF(%ebp), %eax
	imul MULT(%edi), %eax
	add %eax, NOTIFY(%edi)
	mov RING(%edi), %eax
	movw $1, 0x100(%eax)		/* avail flags: VIRTQ_AVAIL_F_NO_INTERRUPT */
	mov %eax, Q_DESC(%ebp)
	movl $0, Q_DESC+4(%ebp)
	add $0x100, %eax
	mov %eax, Q_DRIVER(%ebp)
	movl $0, Q_DRIVER+4(%ebp)
	add $0x100, %eax
	mov %eax, Q_DEVICE(%ebp)
	movl $0, Q_DEVICE+4(%ebp)
	movw $1, Q_ENABLE(%ebp)
	movb $0xf, STATUS(%ebp)		/* | DRIVER_OK */
	mov STATUS(%ebp), %al
	mov $s_driver_ok, %esi
	cmp $0xf, %al
	jne fail
	ret

/* virtq_submit: makes the chain at descriptor 0 of device %edi available, kicks queue 0,
 * and waits for the device to use it. Returns the used length in %eax. */
virtq_submit:
	mov RING(%edi), %esi
	movzwl 0x102(%esi), %eax	/* avail idx */
	mov %eax, %ecx
	and $(QSIZE - 1), %ecx
	movw $0, 0x104(%esi,%ecx,2)	/* ring[idx % QSIZE] = head 0 */
	inc %eax
	mov %ax, 0x102(%esi)
	mov NOTIFY(%edi), %edx
	movw $0, (%edx)			/* queue index */
	rdtsc
	lea 4(%edx), %ecx		/* give up after 2^34 cycles */
1:	movzwl 0x202(%esi), %eax	/* used idx */
	cmp %ax, 0x102(%esi)
	je 2f
	rdtsc
	cmp %ecx, %edx
	jb 1b
	mov $s_timeout, %esi
	jmp fail
2:	dec %eax
	and $(QSIZE - 1), %eax
	mov 0x208(%esi,%eax,8), %eax	/* used ring[i].len */
	ret

/* blk_req: one virtio-blk request of type %eax for sector %edx; %esi = the 512-byte data
 * buffer and %ebx its descriptor flags (F_WRITE for reads), no data for T_FLUSH. Returns
 * the status byte in %al. */
blk_req:
	mov %eax, blk_hdr
	mov %edx, blk_hdr+8
	movb $0xff, blk_status
	mov $blk_ring, %edi
	movl $blk_hdr, (%edi)
	movl $16, 8(%edi)
	movw $F_NEXT, 12(%edi)
	movw $1, 14(%edi)
	cmp $T_FLUSH, %eax
	jne 1f
	movw $2, 14(%edi)		/* header -> status */
1:	mov %esi, 16(%edi)
	movl $512, 24(%edi)
	or $F_NEXT, %ebx
	mov %bx, 28(%edi)
	movw $2, 30(%edi)
	movl $blk_status, 32(%edi)
	movl $1, 40(%edi)
	movw $F_WRITE, 44(%edi)
	mov $blk, %edi
	call virtq_submit
	movzbl blk_status, %eax
	ret

/* put_slot: the string at %esi, then "00:DD.0" for device %edi's slot. */
put_slot:
	call puts
	mov $s_bus, %esi
	call puts
	mov SLOT(%edi), %eax
	call puthex8
	mov $s_fn, %esi
	jmp puts

/* put_status: the string at %esi, then %al in hex and a newline. */
put_status:
	call puts
	call puthex8
	mov $'\n', %al
	jmp putc

#include "hex.S"
#include "lib.S"

	.section .rodata
s_blk:		.asciz "virtio-blk "
s_rng:		.asciz "virtio-rng "
s_bus:		.asciz "00:"
s_fn:		.asciz ".0"
s_capacity:	.asciz " capacity "
s_sectors:	.asciz " sectors\n"
s_read:		.asciz "blk read status "
s_sector0:	.asciz "blk sector 0:"
s_write:	.asciz "blk write status "
s_readback:	.asciz "blk readback status "
s_same:		.asciz "blk write readback ok\n"
s_differs:	.asciz "blk write readback differs\n"
s_flush:	.asciz "blk flush status "
s_rng_got:	.asciz "rng got "
s_bytes_nl:	.asciz " bytes\n"
s_not_zero:	.asciz "rng bytes not all zero\n"
s_all_zero:	.asciz "rng bytes all zero\n"
s_done:		.asciz "virtio done\n"
s_failed:	.asciz "virtio failed: "
s_no_blk:	.asciz "no virtio-blk"
s_no_rng:	.asciz "no virtio-rng"
s_bad_bar:	.asciz "BAR not memory below 4 GiB"
s_no_cap:	.asciz "missing virtio capability"
s_no_reset:	.asciz "reset did not read back 0"
s_no_v1:	.asciz "VERSION_1 not offered"
s_features:	.asciz "FEATURES_OK did not stick"
s_qsize:	.asciz "queue too small"
s_driver_ok:	.asciz "DRIVER_OK did not stick"
s_timeout:	.asciz "request timed out"

	.data
	.align 4
blk:		.long 0, 0, 0, 0, 0, blk_ring
rng:		.long 0, 0, 0, 0, 0, rng_ring

	.bss
	.align 4096
blk_ring:	.space 4096
rng_ring:	.space 4096
buf:		.space 512
buf2:		.space 512
rng_buf:	.space 64
blk_hdr:	.space 16
blk_status:	.space 4
	.align 16
	.space 4096
stack_top:
